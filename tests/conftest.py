"""Fixtures shared by every test module."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from s3_server import MotoServer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 (free port) for the whole session.

    Use `s3_server.create_bucket(name)` (≥ 3 characters; unique per test), then
    `s3_server.storage_options` for fsspec/s3fs or `s3_server.env` (AWS_* variables,
    e.g. with monkeypatch.setenv or a subprocess env).
    """
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def shard_cli():
    """tools/shard.py as a module (its `main(argv)` runs the CLI in-process)."""
    spec = importlib.util.spec_from_file_location("shard_cli", REPO / "tools" / "shard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_addoption(parser):
    parser.addoption("--integration", action="store_true",
                     help="also run the Ray-heavy integration tier (tests marked integration: elastic training, "
                          "the fault matrix, sweeps, the cluster rehearsal)")


def pytest_collection_modifyitems(config, items):
    """The README's test command runs the fast tier; `--integration` adds the integration
    tier (deselected, not skipped, without it: a skip always means something is missing)."""
    if config.getoption("--integration"):
        return
    kept = [item for item in items if "integration" not in item.keywords]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if "integration" in item.keywords])
        items[:] = kept


def pytest_sessionfinish(session, exitstatus):
    """With GENESIS_FAIL_ON_SKIP=1 (.ci/run), a skipped test fails the run: CI has everything
    a test may skip for (the FID weights, root for a size-limited tmpfs)."""
    if os.environ.get("GENESIS_FAIL_ON_SKIP") != "1" or exitstatus not in (0,):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        for report in skipped:
            reporter.write_line(f"unexpected skip: {report.nodeid}: {report.longrepr[-1] if report.longrepr else ''}")
        session.exitstatus = 1


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> str:
    """A generated Multi-dSprites shard set at 32 px shared by the session (tests read it,
    never write into it; a test that damages shards copies them first): 96 train images in
    6 shards of 16, 16 test images in 1 shard."""
    from genesis_dist.data.convert import convert_dataset
    from genesis_dist.data.formats.multi_dsprites import MultiDSprites

    folder = str(tmp_path_factory.mktemp("data") / "multi_dsprites")
    convert_dataset(MultiDSprites({"train": 96, "test": 16}, img_size=32), folder, shard_samples=16, progress=False)
    return folder


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory):
    """A TORCH_HOME holding the FID Inception weights for the session (tests/fid_weights.py:
    skipped with a line saying how to get them, or a failure where they are required)."""
    from fid_weights import seed_torch_home

    home = seed_torch_home(tmp_path_factory.mktemp("torch_home"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        yield home
