"""One run per target, across pods sharing a volume.

`flock` can be local to one mount on network filesystems, and stores without hardlinks (exFAT, rclone)
refuse link(2), so the lock is a file created with O_CREAT|O_EXCL (atomic wherever a file can be
created; fails if it exists) holding its holder's facts: host, boot id, PID namespace, pid and the
pid's start time, start time, its lease. Its mtime is a heartbeat (the lease renewed) refreshed by a
sleeping thread. A lock is stale when its heartbeat is older than its lease, measured by the store's
own clock (the mtime the store gives a file we create now, the clock that stamped the heartbeat) or
by our own watch (the lock unchanged for a lease while we wait); when it is still empty a while after
it was made (its maker was killed between creating and writing it); or when its pid is gone, judged
only where that pid means the same process: the same kernel (boot id) and the same PID namespace.
Two containers with one host name (`docker --network host`, compose `hostname:`) have separate PID
namespaces, where pid 1 of one is not pid 1 of the other: there only the lease decides. A second
run waits for the lock (`--wait`), polling with a growing delay. A kill at any point leaves at most
a stale lock, which the next command takes over (at once in the holder's own PID namespace, after
its lease elsewhere).
"""
from __future__ import annotations

import errno
import json
import os
import random
import socket
import threading
import time
from typing import Callable, Dict, Optional, Tuple

from migrate.core.errors import Locked

LEASE_SECONDS = 120.0      # a holder that has not renewed its lease for this long is dead (or stopped)
HEARTBEAT_SECONDS = 10.0   # how often the holder renews it: many beats per lease, whole-second mtimes
EMPTY_GRACE_SECONDS = 10     # a lock is written microseconds after it is created; whole-second mtimes
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def pid_namespace() -> str:
    """This process's PID namespace (`pid:[4026531836]`), or "" where it cannot be told: no /proc,
    or a /proc of another namespace (`unshare --pid` without `--mount-proc`: /proc/self is not us),
    where no pid read there means our process. A live namespace's id is unique within one boot; a
    dead one's may be given to a new namespace: a holder recording it is then dead with its whole
    namespace, and its pid, looked up in the new one, is found gone (rightly)."""
    try:
        if os.readlink("/proc/self") != str(os.getpid()):
            return ""
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def lease_seconds() -> float:
    """The lease this process promises: LEASE_SECONDS, or COMFY_MIGRATE_LOCK_LEASE seconds (tests, and
    a fleet that wants a dead pod's lock taken over sooner); the heartbeat is a tenth of it at most."""
    raw = os.environ.get("COMFY_MIGRATE_LOCK_LEASE", "")
    try:
        value = float(raw) if raw else LEASE_SECONDS
    except ValueError:
        value = LEASE_SECONDS
    return value if value >= 1 else LEASE_SECONDS


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
            from migrate.disk.fsops import named
            raise named(exc, "write the lock", path) from None
        raise
    os.close(fd)
    return True


def _holder_gone(info: dict) -> bool:
    """The lock's holder is a process of this kernel and PID namespace that is gone."""
    pid, start = info.get("pid"), info.get("pid_start")
    return same_pid_space(info) and isinstance(pid, int) and not _alive(pid, start if isinstance(start, int) else None)


def same_pid_space(info: dict) -> bool:
    """Does the pid a holder recorded name a process we can look up? Only on this kernel (boot id)
    and in this PID namespace: another container's pid 1 is not ours, whatever its host name."""
    ns, boot = pid_namespace(), boot_id()
    return bool(ns and boot) and info.get("pidns") == ns and info.get("boot_id") == boot


def _lease_of(info: dict) -> float:
    """The lease the holder promised (its own COMFY_MIGRATE_LOCK_LEASE), else ours."""
    lease = info.get("lease")
    return float(lease) if isinstance(lease, (int, float)) and lease > 0 else lease_seconds()


class TargetLock:
    def __init__(self, state_dir: str, purpose: str) -> None:
        self.path = os.path.join(state_dir, "lock")
        self.purpose = purpose
        self.took_over: Optional[dict] = None
        self._stop = threading.Event()
        self._held = False
        self._thread: Optional[threading.Thread] = None
        self._token = os.urandom(8).hex()
        self._watch: Dict[tuple, float] = {}     # (content, mtime, inode) -> when we first saw it (monotonic)
        self._swept = False

    def holder(self) -> dict:
        return {"host": socket.gethostname(), "boot_id": boot_id(), "pidns": pid_namespace(), "pid": os.getpid(),
                "pid_start": pid_start(os.getpid()), "lease": lease_seconds(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "purpose": self.purpose}

    def _store_now(self) -> Optional[float]:
        """The store's clock now: the mtime it gives a file created now (then removed), the clock that
        stamps the holder's heartbeats (a pod's own clock may differ from the volume's). None where
        no file can be made (a full or read-only store): our clock and our own watch decide then."""
        probe = f"{self.path}.clock-{self._token}"
        try:
            fd = os.open(probe, CREATE_FLAGS, 0o600)
        except OSError:
            return None
        try:
            now = os.fstat(fd).st_mtime
        except OSError:
            now = None
        finally:
            os.close(fd)
            try:
                os.unlink(probe)
            except OSError:
                pass
        if now is not None and not self._swept:       # a contender killed between create and unlink
            self._swept = True
            folder = os.path.dirname(self.path)
            try:
                names = [n for n in os.listdir(folder) if n.startswith("lock.clock-")]
            except OSError:
                names = []
            for n in names:
                try:
                    if os.lstat(os.path.join(folder, n)).st_mtime < now - 60:
                        os.unlink(os.path.join(folder, n))
                except OSError:
                    pass
        return now

    def _age(self, raw: str, st: os.stat_result) -> float:
        """How long the lock has gone without a heartbeat: by the store's clock, or as long as we have
        watched it unchanged, whichever is longer (each alone is evidence the holder did not renew)."""
        now = self._store_now()
        by_clock = (now if now is not None else time.time()) - st.st_mtime
        key = (raw, st.st_mtime_ns, st.st_ino)
        watched = time.monotonic() - self._watch.setdefault(key, time.monotonic())
        return max(by_clock, watched)

    def _stale(self, info: dict, age: float, raw: str = "x") -> Optional[str]:
        lease = _lease_of(info)
        if age > lease:
            return f"its heartbeat is {age:.0f} s old (its lease: {lease:.0f} s)"
        if not raw.strip() and age > EMPTY_GRACE_SECONDS:
            return "it is empty (its maker was killed while creating it)"
        if raw.strip() and not info.get("host") and age > EMPTY_GRACE_SECONDS:
            # Ours is one JSON object naming its host, written at once: anything else is garbage
            # (a torn copy, an editor's leftover), never a live holder worth the lease.
            return f"{self.path} is not a lock comfy-migrate wrote (corrupt)"
        if _holder_gone(info):
            return f"process {info['pid']} is gone"
        return None

    def _read(self) -> Optional[Tuple[str, os.stat_result, dict]]:
        """The lock's text, its stat (of the same inode) and its facts ({} if it holds none); None if gone."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read().decode("utf-8", "replace")
                st = os.fstat(f.fileno())
        except FileNotFoundError:
            return None
        try:
            info = json.loads(raw)
        except ValueError:
            info = {}
        return raw, st, info if isinstance(info, dict) else {}

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
            got = self._read()
            if got is None:
                continue
            raw, st, info = got
            age = self._age(raw, st)
            why = self._stale(info, age, raw)
            if why is not None:
                if self._break(raw, st, _holder_gone(info)):
                    self.took_over = dict(info, reason=why)
                else:
                    time.sleep(0.05)    # not a busy loop while the lock will not go
                continue
            if time.monotonic() >= deadline:
                raise Locked(self._held_by(info, raw, age, wait),
                             "wait for it to finish (--wait SECONDS); a lock whose holder died is taken over "
                             f"automatically once its lease ({_lease_of(info):.0f} s without a heartbeat) has run out")
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

    def _held_by(self, info: dict, raw: str, age: float, wait: float) -> str:
        waited = f" (waited {wait:.0f} s)" if wait else ""
        if not info.get("host"):
            return (f"the target's lock {self.path} holds no holder's facts (being written, or corrupt: "
                    f"taken over {EMPTY_GRACE_SECONDS} s after its last change){waited}")
        return (f"the target is locked by {info.get('purpose', 'a run')} of pid {info.get('pid', '?')} "
                f"on host {info.get('host', '?')}, started {info.get('started', '?')}, heartbeat {age:.0f} s ago "
                f"({self.path}){waited}")

    def _break(self, raw: str, judged: Optional[os.stat_result] = None, holder_gone: bool = False) -> bool:
        """Remove a stale lock, if it is still the one we read (same text, same heartbeat, same inode:
        a holder that renewed its lease meanwhile keeps it). Returns whether we removed it.
        `holder_gone`: its process is dead (our PID namespace), so it renews nothing, and the heartbeat
        is not compared: rclone shows a file it has not uploaded yet with the mtime "now" while it is
        open, so two reads of a dead holder's fresh lock never show one heartbeat (a run hung here).

        Breakers first take `lock.break` (O_EXCL again), so two of them cannot both remove a lock
        and one of them remove the fresh lock the other's successor just made. A break lock left by
        a killed breaker is removed once its holder is gone (in our PID namespace), or after a minute.
        """
        brk = self.path + ".break"
        if not create_excl(brk, json.dumps(self.holder()).encode()):
            try:
                with open(brk) as f:
                    info = json.loads(f.read() or "{}")
                age = time.time() - os.stat(brk).st_mtime
            except (OSError, ValueError):
                return False
            _drop_dead_break(brk, info, age)
            time.sleep(0.02)
            return False
        try:
            got = self._read()
            if got is None or got[0] != raw:
                return False
            if judged is not None and (got[1].st_ino != judged.st_ino or (
                    not holder_gone and got[1].st_mtime_ns != judged.st_mtime_ns)):
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
            got = self._read()
        except OSError:
            return None
        if got is None:
            self._clear_break()
            return None
        raw, st, info = got
        why = self._stale(info, self._age(raw, st), raw)
        return why if why is not None and self._break(raw, st, _holder_gone(info)) else None

    def _clear_break(self) -> None:
        """With no lock: remove a `lock.break` a breaker killed after removing the stale lock left
        (its holder gone in our PID namespace, or a minute old): nothing else would, as no lock is left to break."""
        brk = self.path + ".break"
        try:
            with open(brk) as f:
                info = json.loads(f.read() or "{}")
            age = time.time() - os.stat(brk).st_mtime
        except (OSError, ValueError):
            return
        _drop_dead_break(brk, info, age)

    def _beat(self) -> None:
        """Renew the lease while the lock is ours. Once another run has taken it over (our lease
        expired: this process was stopped longer than the lease), touching it would keep that run's
        lock alive on our behalf. The token is read and the mtime set through one open file, so
        a lock replaced in between is never touched (only our old inode)."""
        every = min(HEARTBEAT_SECONDS, lease_seconds() / 10)
        while not self._stop.wait(every):
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


def _drop_dead_break(brk: str, info: object, age: float) -> None:
    """Remove `lock.break` left by a breaker that was killed: its process is gone (our PID namespace),
    it is over a minute old, or it is empty past the grace time."""
    info = info if isinstance(info, dict) else {}
    dead = (same_pid_space(info) and isinstance(info.get("pid"), int)
            and not _alive(info["pid"], info.get("pid_start")))
    if dead or age > 60 or (not info and age > EMPTY_GRACE_SECONDS):
        try:
            os.unlink(brk)
        except FileNotFoundError:
            pass
