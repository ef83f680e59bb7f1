"""Streaming xxh3-128 digests (the same hex as `xxhsum -H2`), a digest cache, parallel hashing.

Measured here (shared performance notes): a reused buffer of 1-4 MiB hashes at `xxhsum` speed; the
binding releases the GIL for updates over 64 KiB, so two threads on two large files take ~0.6x the
time of one; small files are cheapest on one thread (open/read/close dominate).
"""
from __future__ import annotations

import errno
import os
import sqlite3
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import xxhash

BUFFER = 1 << 20              # 1 MiB: as fast as 4 MiB here, friendlier to the cache
LARGE = 8 << 20               # files at least this big are hashed on worker threads
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)

OnBytes = Callable[[int], None]
Key = Tuple[int, int, int, int]     # (device, inode, size, mtime_ns)


class ChangedError(OSError):
    """The file is not the one that was scanned (or changed while it was read)."""


def open_regular(path: str, expect: Optional[Key] = None) -> int:
    """Open for reading without following a symlink or blocking on a FIFO; insist on a regular file."""
    fd = os.open(path, OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ChangedError(errno.EINVAL, "not a regular file", path)
        if expect is not None and stat_key(st) != expect:
            raise ChangedError(errno.ESTALE, "changed since it was scanned", path)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except (AttributeError, OSError):
            pass
        return fd
    except BaseException:
        os.close(fd)
        raise


def stat_key(st: os.stat_result) -> Key:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def hash_fd(fd: int, buf: bytearray, on_bytes: Optional[OnBytes] = None) -> str:
    h = xxhash.xxh3_128()
    view = memoryview(buf)
    pending = 0
    with open(fd, "rb", buffering=0, closefd=False) as f:
        while True:
            n = f.readinto(view)
            if not n:
                break
            h.update(view[:n])
            if on_bytes is not None:
                pending += n
                if pending >= (64 << 20):
                    on_bytes(pending)
                    pending = 0
    if on_bytes is not None and pending:
        on_bytes(pending)
    return h.hexdigest()


def hash_path(path: str, expect: Optional[Key] = None, buf: Optional[bytearray] = None,
              on_bytes: Optional[OnBytes] = None) -> str:
    """Digest of a regular file; raises ChangedError if it is not the scanned one or changes meanwhile."""
    fd = open_regular(path, expect)
    try:
        digest = hash_fd(fd, buf if buf is not None else bytearray(BUFFER), on_bytes)
        if expect is not None and stat_key(os.fstat(fd)) != expect:
            raise ChangedError(errno.ESTALE, "changed while it was read", path)
        return digest
    finally:
        os.close(fd)


def hash_bytes(data: bytes) -> str:
    return xxhash.xxh3_128(data).hexdigest()


class DigestCache:
    """Digests keyed by (device, inode, size, mtime_ns) in a small SQLite file.

    Loaded whole at open (one query), written in one transaction at save. A damaged cache is
    discarded, never trusted.
    """

    def __init__(self, path: Optional[str]) -> None:
        self.path = path
        self._known: Dict[Tuple[int, int], Tuple[int, int, str]] = {}
        self._new: Dict[Tuple[int, int], Tuple[int, int, str]] = {}
        if path and os.path.exists(path):
            try:
                con = sqlite3.connect(path)
                try:
                    rows = con.execute("SELECT dev, ino, size, mtime_ns, digest FROM digests").fetchall()
                finally:
                    con.close()
                self._known = {(d, i): (s, m, h) for d, i, s, m, h in rows}
            except sqlite3.Error:
                self._known = {}
                try:
                    os.replace(path, path + ".damaged")
                except OSError:
                    pass

    def get(self, key: Key) -> Optional[str]:
        hit = self._new.get(key[:2]) or self._known.get(key[:2])
        if hit and hit[0] == key[2] and hit[1] == key[3]:
            return hit[2]
        return None

    def put(self, key: Key, digest: str) -> None:
        self._new[key[:2]] = (key[2], key[3], digest)

    def save(self) -> None:
        if not self.path or not self._new:
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            con = sqlite3.connect(self.path, timeout=30)
            try:
                with con:
                    con.execute("CREATE TABLE IF NOT EXISTS digests (dev INTEGER, ino INTEGER, size INTEGER,"
                                " mtime_ns INTEGER, digest TEXT, PRIMARY KEY (dev, ino))")
                    con.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?)",
                                    [(d, i, s, m, h) for (d, i), (s, m, h) in self._new.items()])
            finally:
                con.close()
            self._known.update(self._new)
            self._new.clear()
        except (sqlite3.Error, OSError):
            pass   # a cache that cannot be written only costs time next run


def default_cache_path() -> str:
    explicit = os.environ.get("COMFY_MIGRATE_CACHE")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "comfy-migrate", "digests.sqlite")


def hash_many(
    jobs: Sequence[Tuple[str, Key]],
    on_bytes: Optional[OnBytes] = None,
    workers: Optional[int] = None,
) -> List[Tuple[Optional[str], Optional[OSError]]]:
    """Hash files in parallel: large ones on worker threads, small ones on one thread.

    Returns (digest, error) per job, in order. The caller's thread only waits.
    """
    results: List[Tuple[Optional[str], Optional[OSError]]] = [(None, None)] * len(jobs)
    workers = workers or min(4, os.cpu_count() or 1)
    local = threading.local()

    def one(i: int) -> None:
        path, key = jobs[i]
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = bytearray(BUFFER)
        try:
            results[i] = (hash_path(path, key, buf, on_bytes), None)
        except OSError as exc:
            results[i] = (None, exc)

    large = [i for i, (_, key) in enumerate(jobs) if key[2] >= LARGE]
    small = [i for i, (_, key) in enumerate(jobs) if key[2] < LARGE]
    if small:
        large_first = sorted(large, key=lambda i: -jobs[i][1][2])
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # Small files go through one worker as one task so they never contend with each other.
            futures = [pool.submit(lambda: [one(i) for i in small])]
            futures += [pool.submit(one, i) for i in large_first]
            for f in futures:
                f.result()
    elif large:
        with ThreadPoolExecutor(max_workers=min(workers, len(large))) as pool:
            list(pool.map(one, sorted(large, key=lambda i: -jobs[i][1][2])))
    return results
