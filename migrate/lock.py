"""One run per target, across pods sharing a volume.

`flock` can be local to one mount on network filesystems, and stores without hardlinks (exFAT, rclone)
refuse link(2), so the lock is a file created with O_CREAT|O_EXCL (atomic wherever a file can be
created; fails if it exists) holding its holder's facts: host, boot id, pid and the pid's start time,
start time. Its mtime is a heartbeat refreshed by a sleeping thread. A lock is stale when its pid is
gone on this host (same boot; a zombie or a reused pid counts as gone), when its heartbeat is older
than the lease, or when it is still empty a while after it was made (its maker was killed between
creating and writing it); a live lock of another host is never broken. A second run waits for the
lock (`--wait`), polling with a growing delay. A kill at any point leaves at most a stale lock,
which the next command takes over.
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
EMPTY_GRACE_SECONDS = 10     # a lock is written microseconds after it is created; whole-second mtimes
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def pid_start(pid: int) -> Optional[int]:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22): a pid reused by
    another process has another. None where /proc cannot say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
        return int(raw[raw.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, start: Optional[int] = None) -> bool:
    """Is the process still running? A zombie (killed, not yet reaped) is not; nor is another
    process that got the same pid (its start time differs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
        if raw[raw.rindex(")") + 2:].split()[0] in ("Z", "X"):
            return False
    except (OSError, ValueError):
        pass
    return start is None or pid_start(pid) in (None, start)


def create_excl(path: str, data: bytes) -> bool:
    """Create `path` holding `data` unless it exists (False then). O_EXCL, not link(2): it works on
    every filesystem that can create a file. Killed between the create and the write, an empty file
    is left: readers treat an empty lock older than EMPTY_GRACE_SECONDS as stale."""
    try:
        fd = os.open(path, CREATE_FLAGS, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, data)
        os.fsync(fd)
    except BaseException as exc:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        if isinstance(exc, OSError):     # a write has no file name: say which (a full disk: exit 4)
            from migrate.fsops import named
            raise named(exc, "write the lock", path) from None
        raise
    os.close(fd)
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
                "pid_start": pid_start(os.getpid()),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "purpose": self.purpose}

    def _stale(self, info: dict, age: float, raw: str = "x") -> Optional[str]:
        if age > LEASE_SECONDS:
            return f"its heartbeat is {age:.0f} s old"
        if not raw.strip() and age > EMPTY_GRACE_SECONDS:
            return "it is empty (its maker was killed while creating it)"
        if info.get("host") == socket.gethostname():
            if info.get("boot_id") and info.get("boot_id") != boot_id():
                return "its host has rebooted since"
            pid = info.get("pid")
            start = info.get("pid_start")
            if isinstance(pid, int) and not _alive(pid, start if isinstance(start, int) else None):
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
        mine = json.dumps(dict(self.holder(), token=self._token)).encode()
        seen: Optional[str] = None
        delay = 0.05
        while True:
            if create_excl(self.path, mine):
                break
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
            why = self._stale(info, age, raw)
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
        self._held = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _break(self, raw: str) -> bool:
        """Remove a stale lock, if it is still the one we read. Returns whether we removed it.

        Breakers first take `lock.break` (O_EXCL again), so two of them cannot both remove a lock
        and one of them remove the fresh lock the other's successor just made. A break lock left by
        a killed breaker is removed once its holder is gone (same host), or after a minute.
        """
        brk = self.path + ".break"
        if not create_excl(brk, json.dumps(self.holder()).encode()):
            try:
                with open(brk) as f:
                    info = json.loads(f.read() or "{}")
                age = time.time() - os.stat(brk).st_mtime
            except (OSError, ValueError):
                return False
            dead = (info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int)
                    and not _alive(info["pid"], info.get("pid_start")))
            if dead or age > 60 or (not info and age > EMPTY_GRACE_SECONDS):
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

    def clear_stale(self) -> Optional[str]:
        """Remove the lock if it is stale (its holder died: killed right after a run or rollback
        closed its log, it had nothing left to do under it), without taking it. A command that
        finds nothing to do calls this, so no stale lock outlives the first command after a kill.
        Returns why it was removed, or None."""
        self._token = os.urandom(8).hex()
        try:
            with open(self.path) as f:
                raw = f.read()
            age = time.time() - os.stat(self.path).st_mtime
        except OSError:
            self._clear_break()
            return None
        try:
            info = json.loads(raw)
        except ValueError:
            info = {}
        why = self._stale(info if isinstance(info, dict) else {}, age, raw)
        return why if why is not None and self._break(raw) else None

    def _clear_break(self) -> None:
        """With no lock: remove a `lock.break` a breaker killed after removing the stale lock left
        (its holder gone on this host, or a minute old): nothing else would, as no lock is left to break."""
        brk = self.path + ".break"
        try:
            with open(brk) as f:
                info = json.loads(f.read() or "{}")
            age = time.time() - os.stat(brk).st_mtime
        except (OSError, ValueError):
            return
        if not isinstance(info, dict):
            info = {}
        dead = (info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int)
                and not _alive(info["pid"], info.get("pid_start")))
        if dead or age > 60 or (not info and age > EMPTY_GRACE_SECONDS):
            try:
                os.unlink(brk)
            except FileNotFoundError:
                pass

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
