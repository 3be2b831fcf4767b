"""Fixtures shared by every test module."""
from __future__ import annotations

import pytest

from s3_server import MotoServer


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 (free port) for the whole session.

    Use `s3_server.create_bucket(name)` (≥ 3 characters; unique per test), then
    `s3_server.storage_options` for fsspec/s3fs or `s3_server.env` (AWS_* variables,
    e.g. with monkeypatch.setenv or a subprocess env).
    """
    with MotoServer() as server:
        yield server


def pytest_addoption(parser):
    parser.addoption("--integration", action="store_true",
                     help="also run the Ray-heavy integration tier (tests marked integration)")


def pytest_collection_modifyitems(config, items):
    """The README's test command runs the fast tier; `--integration` adds the integration tier."""
    if config.getoption("--integration"):
        return
    skip = pytest.mark.skip(reason="integration tier: run with --integration")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)
