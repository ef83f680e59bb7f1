"""One run per target, across pods sharing a volume.

`flock` can be local to one mount on network filesystems, so the lock is a file created with
link(2) (atomic, fails if it exists) holding its holder's facts: host, boot id, pid, start time.
Its mtime is a heartbeat refreshed by a sleeping thread. A lock is stale when its pid is dead on
this host (same boot), or when its heartbeat is older than the lease; a live lock of another host
is never broken.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from typing import Optional

from migrate.errors import Locked

LEASE_SECONDS = 600
HEARTBEAT_SECONDS = 30


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TargetLock:
    def __init__(self, state_dir: str, purpose: str) -> None:
        self.path = os.path.join(state_dir, "lock")
        self.purpose = purpose
        self.took_over: Optional[dict] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def holder(self) -> dict:
        return {"host": socket.gethostname(), "boot_id": boot_id(), "pid": os.getpid(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "purpose": self.purpose}

    def _stale(self, info: dict, age: float) -> Optional[str]:
        if age > LEASE_SECONDS:
            return f"its heartbeat is {age:.0f} s old"
        if info.get("host") == socket.gethostname():
            if info.get("boot_id") and info.get("boot_id") != boot_id():
                return "its host has rebooted since"
            pid = info.get("pid")
            if isinstance(pid, int) and not _alive(pid):
                return f"process {pid} is gone"
        return None

    def acquire(self) -> "TargetLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.{socket.gethostname()}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.holder(), f)
            f.flush()
            os.fsync(f.fileno())
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                    break
                except FileExistsError:
                    pass
                try:
                    with open(self.path) as f:
                        raw = f.read()
                    age = time.time() - os.stat(self.path).st_mtime
                except FileNotFoundError:
                    continue
                try:
                    info = json.loads(raw)
                except ValueError:
                    info = {}
                why = self._stale(info, age)
                if why is None:
                    raise Locked(
                        f"the target is locked by {info.get('purpose', 'a run')} of pid {info.get('pid', '?')} "
                        f"on host {info.get('host', '?')}, started {info.get('started', '?')}",
                        "wait for it to finish; a lock whose holder died is taken over automatically")
                # Take over: move the stale lock aside (only if it is still the one we read).
                aside = f"{self.path}.stale.{os.getpid()}"
                try:
                    os.rename(self.path, aside)
                    with open(aside) as f:
                        if f.read() != raw:
                            os.rename(aside, self.path)
                            continue
                    os.unlink(aside)
                except FileNotFoundError:
                    continue
                self.took_over = dict(info, reason=why)
            else:
                raise Locked("could not take the target's lock (others are racing for it)", "try again")
        finally:
            os.unlink(tmp)
        self._thread = threading.Thread(target=self._beat, name="lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        try:
            with open(self.path) as f:
                info = json.loads(f.read())
            if info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
                os.unlink(self.path)
        except (OSError, ValueError):
            pass

    def __enter__(self) -> "TargetLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
