"""One evaluator per run: a lease in the run folder, `{run}/eval/lease/<generation>.json`.

Object stores have no locks and no rename, but S3 (and moto, and local files) can create
an object only if it does not exist yet (`storage.create_exclusive`: If-None-Match on S3,
a hard link locally). The lease is the highest generation; each generation file is created
exclusively, so of two evaluators taking over the same expired or released generation N,
exactly one creates N+1. Nothing is ever deleted blindly, so a taker cannot remove a fresh
lease by mistake.

A lease holds for `seconds` after its last renewal (`renew`, every `seconds / 4` by a
background thread while evaluating). It is free when released, expired, or held by a
process of this host that no longer runs (an evaluator killed with SIGKILL is re-run at
once). A holder that finds a newer generation has lost the lease (it was paused past its
expiry) and must stop before recording anything more.
"""
from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid
from typing import Any, Callable

from ..storage import create_exclusive, filesystem, join, list_names, write_atomic
from ..training.layout import EVAL_FOLDER

LEASE_FOLDER = f"{EVAL_FOLDER}/lease"
LEASE_SECONDS = 300.0
GENERATION = re.compile(r"^(\d{8})\.json$")


class LeaseBusy(RuntimeError):
    """Another evaluator holds the run's lease; one line naming it and until when."""


class LeaseLost(RuntimeError):
    """This evaluator's lease was taken over (it had expired); one line."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class EvalLease:
    """The evaluation lease of the run at `run_url` (see module docstring)."""

    def __init__(self, run_url: str, storage_options: dict | None = None, seconds: float = LEASE_SECONDS,
                 clock: Callable[[], float] = time.time):
        self.folder = join(run_url, LEASE_FOLDER)
        self.storage_options, self.seconds, self.clock = storage_options, seconds, clock
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.owner = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.generation: int | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _url(self, generation: int) -> str:
        return join(self.folder, f"{generation:08d}.json")

    def _generations(self) -> list[int]:
        return sorted(int(m.group(1)) for n in list_names(self.folder, self.storage_options)
                      if (m := GENERATION.match(n)))

    def _read(self, generation: int) -> dict[str, Any] | None:
        fs, path = filesystem(self._url(generation), self.storage_options)
        try:
            return json.loads(fs.cat_file(path))
        except (FileNotFoundError, ValueError):
            return None

    def _record(self, released: bool = False) -> bytes:
        now = self.clock()
        return json.dumps({"owner": self.owner, "host": self.host, "pid": self.pid, "released": released,
                           "renewed": now, "expires": now + self.seconds}).encode()

    def holder(self, record: dict[str, Any] | None) -> str | None:
        """Who holds a generation's `record` now, or None when it is free."""
        if not record or record.get("released") or float(record.get("expires", 0)) <= self.clock():
            return None
        if record.get("host") == self.host and not _process_alive(int(record.get("pid", -1))):
            return None  # its evaluator on this machine is gone (killed)
        return str(record.get("owner"))

    def acquire(self) -> None:
        """Take the lease or raise LeaseBusy naming the evaluator that holds it."""
        for _ in range(3):
            generations = self._generations()
            current = generations[-1] if generations else 0
            record = self._read(current) if current else None
            holder = self.holder(record)
            if holder is not None and holder != self.owner:
                until = time.strftime("%H:%M:%S", time.localtime(float(record["expires"])))
                raise LeaseBusy(f"another evaluator ({holder}) is evaluating this run (its lease in "
                                f"{self.folder} lasts until {until} unless renewed); wait for it, or stop it")
            if create_exclusive(self._url(current + 1), self._record(), self.storage_options):
                self.generation = current + 1
                self._forget(generations)
                return
        raise LeaseBusy(f"another evaluator took the lease in {self.folder} at the same moment; try again")

    def _forget(self, generations: list[int]) -> None:
        """Delete generations two or more behind ours (no one can take them over any more)."""
        for generation in generations:
            if generation < (self.generation or 0) - 1:
                fs, path = filesystem(self._url(generation), self.storage_options)
                try:
                    fs.rm(path)
                except FileNotFoundError:
                    pass

    def check(self) -> None:
        """Raise LeaseLost when a newer generation exists (another evaluator took over)."""
        if self.lost or (self.generation is not None and self._generations()[-1:] != [self.generation]):
            self.lost = True
            raise LeaseLost(f"this evaluator's lease in {self.folder} expired and another evaluator took over; "
                            "stopping (what it recorded so far stays)")

    def renew(self) -> None:
        """Extend the lease by `seconds` (LeaseLost when it was taken over)."""
        self.check()
        write_atomic(self._url(self.generation), self._record(), self.storage_options)

    def start_renewing(self) -> None:
        """Renew every `seconds / 4` in a background thread until `release`."""
        def loop() -> None:
            while not self._stop.wait(self.seconds / 4):
                try:
                    self.renew()
                except LeaseLost:
                    return
                except OSError:  # a storage hiccup: the next renewal tries again
                    pass

        self._thread = threading.Thread(target=loop, name="eval-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Give the lease up (marked released, so the next evaluator takes it at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.generation is None or self.lost:
            return
        try:
            if self._generations()[-1:] == [self.generation]:
                write_atomic(self._url(self.generation), self._record(released=True), self.storage_options)
        except OSError:
            pass  # it expires on its own
        self.generation = None
