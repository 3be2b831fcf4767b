"""A command run as a user runs it (`python -m genesis_dist.<command> ...`) in its own
process, with every output line stamped with the moment it arrived: the fault tests kill
it, wait for lines, and measure recovery from the stamps."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time


class Driver:
    """`python -m genesis_dist.<command> *args` with environment `env` (started at once)."""

    def __init__(self, command: str, args: list[str], env: dict[str, str], cwd: str | None = None):
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-m", f"genesis_dist.{command}", *args], env={**env, "PYTHONUNBUFFERED": "1"},
            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
        )
        self.out: list[tuple[float, str]] = []
        self.err: list[tuple[float, str]] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[tuple[float, str]]) -> None:
        for line in stream:
            lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, pattern: str, timeout: float = 300.0) -> float:
        """The arrival time of the first stdout line matching `pattern` (regex); raises
        AssertionError when the process ends or `timeout` passes first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for stamp, line in list(self.out):
                if regex.search(line):
                    return stamp
            if self.process.poll() is not None:
                time.sleep(0.5)  # the readers catch up
                for stamp, line in list(self.out):
                    if regex.search(line):
                        return stamp
                raise AssertionError(f"exited {self.process.returncode} before {pattern!r}:\n{self.tail()}")
            time.sleep(0.02)
        raise AssertionError(f"no {pattern!r} within {timeout:g} s:\n{self.tail()}")

    def finish(self, timeout: float = 600.0) -> int:
        """Wait for the exit; returns the status (kills the process after `timeout`)."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"still running after {timeout:g} s:\n{self.tail()}") from None
        for reader in self._readers:
            reader.join(timeout=10)
        self.ended = time.monotonic()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL (no cleanup runs in the process), then reap it."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.finish(timeout=60)

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def stdout(self) -> str:
        return "\n".join(line for _, line in self.out)

    def stderr(self) -> str:
        return "\n".join(line for _, line in self.err)

    def steps(self) -> list[tuple[float, int]]:
        """(arrival time, step) of every training step line the run printed."""
        found = []
        for stamp, line in self.out:
            match = re.search(r"\[genesis-dist\] step (\d+)/", line)
            if match:
                found.append((stamp, int(match.group(1))))
        return found

    def tail(self, lines: int = 40) -> str:
        return "\n".join([line for _, line in self.out[-lines:]] + ["--- stderr ---"]
                         + [line for _, line in self.err[-lines:]])
