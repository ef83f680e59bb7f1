"""One run per target, across pods sharing a volume.

`flock` can be local to one mount on network filesystems, so the lock is a file created with
link(2) (atomic, fails if it exists) holding its holder's facts: host, boot id, pid, start time.
Its mtime is a heartbeat refreshed by a sleeping thread. A lock is stale when its pid is dead on
this host (same boot), or when its heartbeat is older than the lease; a live lock of another host
is never broken. A second run waits for the lock (`--wait`), polling with a growing delay.
"""
from __future__ import annotations

import errno
import json
import os
import random
import socket
import threading
import time
from typing import Callable, Optional

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
        self._held = False
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

    def acquire(self, wait: float = 0, on_wait: Optional[Callable[[dict], None]] = None) -> "TargetLock":
        """Take the lock; while another live run holds it, wait up to `wait` seconds (polling).

        on_wait(holder) is called once per new holder seen, to tell the user whom we wait for.
        Raises Locked when the time is up (at once with wait=0).
        """
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        deadline = time.monotonic() + max(0.0, wait)
        self._token = os.urandom(8).hex()
        tmp = f"{self.path}.{socket.gethostname()}.{os.getpid()}.{self._token}"
        with open(tmp, "w") as f:
            json.dump(dict(self.holder(), token=self._token), f)
            f.flush()
            os.fsync(f.fileno())
        seen: Optional[str] = None
        delay = 0.05
        try:
            while True:
                try:
                    # The lock's mtime is its heartbeat, and link(2) gives it our file's: freshen it
                    # first, or a wait longer than the lease would take the lock in already stale.
                    os.utime(tmp)
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
                if why is not None:
                    if self._break(raw):
                        self.took_over = dict(info, reason=why)
                    continue
                if time.monotonic() >= deadline:
                    raise Locked(
                        f"the target is locked by {info.get('purpose', 'a run')} of pid {info.get('pid', '?')} "
                        f"on host {info.get('host', '?')}, started {info.get('started', '?')}"
                        + (f" (waited {wait:.0f} s)" if wait else ""),
                        "wait for it to finish (--wait SECONDS); a lock whose holder died is taken over "
                        "automatically")
                if raw != seen and on_wait is not None:
                    on_wait(info)
                seen = raw
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())) * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)
        finally:
            os.unlink(tmp)
        self._held = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _break(self, raw: str) -> bool:
        """Remove a stale lock, if it is still the one we read. Returns whether we removed it.

        Breakers first take `lock.break` (link(2) again), so two of them cannot both remove a lock
        and one of them remove the fresh lock the other's successor just made. A break lock left by
        a killed breaker is removed once its holder is gone (same host) or after a minute.
        """
        brk = self.path + ".break"
        mine = f"{brk}.{socket.gethostname()}.{os.getpid()}.{self._token}"
        with open(mine, "w") as f:
            json.dump(self.holder(), f)
        try:
            try:
                os.link(mine, brk)
            except FileExistsError:
                try:
                    with open(brk) as f:
                        info = json.loads(f.read() or "{}")
                    age = time.time() - os.stat(brk).st_mtime
                except (OSError, ValueError):
                    return False
                dead = (info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int)
                        and not _alive(info["pid"]))
                if dead or age > 60:
                    try:
                        os.unlink(brk)
                    except FileNotFoundError:
                        pass
                time.sleep(0.02)
                return False
            try:
                with open(self.path) as f:
                    if f.read() != raw:
                        return False
                os.unlink(self.path)
                return True
            except FileNotFoundError:
                return False
            finally:
                os.unlink(brk)
        finally:
            os.unlink(mine)

    def _beat(self) -> None:
        """Refresh the lease while the lock is ours. Once another run has taken it over (our lease
        expired: this process was stopped longer than the lease), touching it would keep that run's
        lock alive on our behalf. The token is read and the mtime set through one open file, so
        a lock replaced in between is never touched (only our old inode)."""
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                with open(self.path) as f:
                    if json.loads(f.read() or "{}").get("token") != self._token:
                        return
                    os.utime(f.fileno())
            except (OSError, ValueError):
                pass

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        self._stop.set()
        try:
            with open(self.path) as f:
                info = json.loads(f.read())
            if info.get("token") == getattr(self, "_token", None) and info.get("pid") == os.getpid():
                os.unlink(self.path)
        except (OSError, ValueError):
            pass

    def __enter__(self) -> "TargetLock":
        return self if self._held else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
