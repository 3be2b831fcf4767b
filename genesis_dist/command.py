"""How every command (`train`, `evaluate`, `tune`) ends: a documented exit status and, for
each failure, one line on stderr.

A user mistake (a config error, a bad option) is one line and status 2. Anything else is
described in one line too (`training.worker.describe_failure`: a storage failure gets its
own status, a worker's own error is named through Ray's wrappers), because a traceback
through Ray's processes is mostly Ray's; `--debug` on the command line, or
`GENESIS_DIST_DEBUG=1` in the environment, prints the traceback before that line.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

from .config import ConfigError

DEBUG_FLAG = "--debug"
DEBUG_VARIABLE = "GENESIS_DIST_DEBUG"
USAGE_STATUS = 2


def debug_requested(argv: list[str]) -> tuple[list[str], bool]:
    """(`argv` without `--debug`, whether tracebacks were asked for by it or the environment)."""
    wanted = DEBUG_FLAG in argv or os.environ.get(DEBUG_VARIABLE, "").lower() in ("1", "true", "yes")
    return [a for a in argv if a != DEBUG_FLAG], wanted


def describe_error(err: BaseException) -> tuple[int, str]:
    """(status, "error: <one line>") of a failure (`training.worker.describe_failure`)."""
    from .training.worker import describe_failure

    status, line = describe_failure(err)
    return status, f"error: {line}"


def run_command(name: str, body: Callable[[list[str]], int], argv: list[str],
                usage_errors: tuple[type[BaseException], ...] = (),
                statuses: dict[type[BaseException], int] | None = None,
                describe: Callable[[BaseException], tuple[int, str]] | None = None) -> int:
    """Run `body(argv)` (returns the exit status) and turn what it raises into one line on
    stderr and a status: ConfigError and `usage_errors` → 2; an instance of a `statuses` key →
    its value (a documented condition, e.g. a held lease); anything else → `describe(err)`
    (default `describe_error`; it returns the whole line after the command's name), with the
    traceback first when debugging."""
    argv, debug = debug_requested(argv)
    try:
        return body(argv)
    except (ConfigError, *usage_errors) as err:
        print(f"{name}: error: {err}", file=sys.stderr, flush=True)
        return USAGE_STATUS
    except Exception as err:  # noqa: BLE001 - every failure ends in one line and a documented status
        for kind, status in (statuses or {}).items():
            if isinstance(err, kind):
                print(f"{name}: error: {err}", file=sys.stderr, flush=True)
                return status
        status, line = (describe or describe_error)(err)
        if debug:
            traceback.print_exception(err, file=sys.stderr)
        hint = "" if debug or status != 1 else f" ({DEBUG_FLAG} or {DEBUG_VARIABLE}=1 shows the traceback)"
        print(f"{name}: {line}{hint}", file=sys.stderr, flush=True)
        return status
