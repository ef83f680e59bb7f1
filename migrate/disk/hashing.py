"""Streaming xxh3-128 digests (the same hex as `xxhsum -H2`), a digest cache, parallel hashing.

Measured on our 2-core AMD VMs (scripts/bench, docs/bench-latest.md):
- Read buffers must be 32-byte aligned. A bytearray of 128 KiB or more sits 16 bytes into its
  page, and the kernel's copy into it runs ~4x slower (0.40 s instead of 0.10 s per 512 MiB
  from the page cache): reading, not hashing, is the cost, so every buffer here is page-aligned
  anonymous memory (`aligned_buffer`), and a caller's bytearray is used from an aligned offset.
- Reading dominates (xxh3 itself runs at ~20 GB/s), so the two cores must both read: large
  files are hashed on worker threads (the binding releases the GIL for updates over 64 KiB), and
  a worker with nothing left to do helps read the chunks of a large file another worker is
  hashing (a 1 GiB file alone: ~0.65x the time of one thread, 0.13 s against xxhsum's 0.20 s).
- Small files are cheapest on one thread (open/fstat/read/close dominate): no fadvise, one
  reused buffer, a one-shot digest.
- The caller's thread only waits: a CPU-bound Python thread beside the workers starves them.
"""
from __future__ import annotations

import errno
import mmap
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence

import xxhash

from migrate.disk import identity

BUFFER = 1 << 20              # 1 MiB: 128 KiB-4 MiB measure the same once aligned
LARGE = 8 << 20               # files at least this big are hashed on worker threads, one task each
SPLIT = 32 << 20              # files at least this big may be read by two threads at once
AHEAD = 4                     # chunks a helper may read ahead of the hashing
ALIGN = 64                    # 32 suffices on the machines measured; a cache line to be safe
PROGRESS = 32 << 20           # report progress in steps of at least this many bytes
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)

EXTRA_MIN = 64 << 10          # chunks at least this big: SHA-256 on a pool thread while xxh3 and BLAKE3 run here
HASHES = ("xxh3", "sha256", "blake3")

OnBytes = Callable[[int], None]
# "Is it still the file we saw" is identity.Observed, compared by identity.changes (one rule):
Key = identity.Observed     # device, inode, size, mtime_ns (ctime_ns None: not compared)
Stamp = identity.Observed   # ... and ctime_ns: what a digest read from the bytes is bound to (git's stat_data)
FINE_SLACK_NS = 100_000_000         # a timestamp tick (coarse kernel clock, 100 ns filesystems) and then some
COARSE_SLACK_NS = 2_000_000_000     # whole-second (MooseFS, ext4 -I 128) and 2-second (FAT, exFAT) times
Buffer = bytearray | mmap.mmap | memoryview


class ChangedError(OSError):
    """The file is not the one that was scanned (or changed while it was read)."""


class _Stopped(Exception):
    """The caller was interrupted; workers leave at the next chunk."""


# --- the hashes other tools speak: SHA-256 and BLAKE3, computed in the same read as xxh3 -----------
#
# xxh3-128 stays the store's identity for content (dedupe, journal, catalogue keys). SHA-256 (what
# Civitai, Hugging Face's LFS oid, comfy-cli and the sidecars of model managers name) and BLAKE3
# (ComfyUI's assets database, `blake3:<hex>`) are facts about that content: they are remembered per
# xxh3 digest (`extras`), so they follow the xxh3 digest wherever it is trusted (digest cache,
# catalogue) and never need a read of their own. Both bindings release the GIL on large updates:
# SHA-256 (the slowest, ~2 GB/s with the CPU's SHA extensions) runs on a pool thread while this thread
# runs xxh3 and BLAKE3 over the same chunk (the buffer is reused only after both are done).

_extras_on = os.environ.get("COMFY_MIGRATE_HASHES", "all").strip().lower() not in ("xxh3", "xxh3-only")
_EXTRAS: dict[str, tuple[str, str]] = {}        # xxh3 hex -> (sha256 hex, blake3 hex)
_pool = None
_pool_lock = threading.Lock()


def set_hashes(which: str) -> None:
    """'all' (xxh3, SHA-256 and BLAKE3 in each read) or 'xxh3' (today's speed: xxh3 only)."""
    global _extras_on
    _extras_on = which != "xxh3"


def hashes_on() -> bool:
    return _extras_on


def extras(digest: str | None) -> tuple[str, str] | None:
    """(sha256 hex, blake3 hex) of the content whose xxh3 digest is `digest`, if a read computed them."""
    return _EXTRAS.get(digest) if digest else None


def remember_extras(digest: str, sha256: str, blake3_hex: str) -> None:
    if len(sha256) == 64 and len(blake3_hex) == 64:
        _EXTRAS[digest] = (sha256, blake3_hex)


def _executor():
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                from concurrent.futures import ThreadPoolExecutor
                _pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)),
                                           thread_name_prefix="sha256")
    return _pool


def _forget_pool_after_fork() -> None:
    # A forked child has none of its parent's threads: a pool made before the fork would take the
    # child's work and never run it (the torture harness forks CLI children after in-process runs).
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


class Hasher:
    """xxh3-128, and (unless `set_hashes('xxh3')`) SHA-256 and BLAKE3, over the same bytes.

    hexdigest() is the xxh3 hex (what every caller keys on); it also records the other two
    (`extras`)."""

    __slots__ = ("x", "s", "b")

    def __init__(self, extra: bool | None = None) -> None:
        self.x = xxhash.xxh3_128()
        if extra if extra is not None else _extras_on:
            import hashlib      # here: not every command reads a file's bytes (start-up)
            import blake3
            self.s, self.b = hashlib.sha256(), blake3.blake3()
        else:
            self.s = self.b = None

    def update(self, data) -> None:
        if self.s is None:
            self.x.update(data)
        elif len(data) >= EXTRA_MIN and (os.cpu_count() or 1) >= 2:
            job = _executor().submit(self.s.update, data)
            try:
                self.b.update(data)
                self.x.update(data)
            finally:
                job.result()            # the caller may reuse the buffer only after this
        else:
            self.s.update(data)
            self.b.update(data)
            self.x.update(data)

    def hexdigest(self) -> str:
        digest = self.x.hexdigest()
        if self.s is not None:
            remember_extras(digest, self.s.hexdigest(), self.b.hexdigest())
        return digest

    def all(self) -> tuple[str, str | None, str | None]:
        digest = self.hexdigest()
        return (digest,) + (extras(digest) or (None, None)) if self.s is not None else (digest, None, None)


def one_shot(data, extra: bool | None = None) -> str:
    """xxh3 hex of a buffer (and its other hashes, when on; `extra` as Hasher's)."""
    if not (extra if extra is not None else _extras_on):
        return xxhash.xxh3_128_hexdigest(data)
    h = Hasher(True)
    h.update(data)
    return h.hexdigest()


def aligned_buffer(size: int = BUFFER) -> mmap.mmap:
    """A page-aligned scratch buffer (anonymous memory): the kernel copies into it at full speed."""
    return mmap.mmap(-1, size)


def _aligned_view(buf: Buffer) -> memoryview:
    """A writable byte view of buf starting at an ALIGN-byte boundary."""
    view = memoryview(buf).cast("B") if not isinstance(buf, memoryview) or buf.format != "B" else buf
    if isinstance(buf, mmap.mmap):
        return view
    import ctypes   # only for a caller's own buffer (ours are mmap, aligned by construction)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(view))
    shift = (-addr) % ALIGN
    return view[shift:] if shift and len(view) - shift >= (64 << 10) else view


_local = threading.local()


def _thread_buffer() -> memoryview:
    view = getattr(_local, "view", None)
    if view is None:
        view = _local.view = memoryview(aligned_buffer(BUFFER))
    return view


def _open(path: str, expect: Key | Stamp | None, advise: bool) -> tuple[int, os.stat_result]:
    fd = os.open(path, OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ChangedError(errno.EINVAL, "not a regular file", path)
        if expect is not None and not matches(st, expect):
            raise ChangedError(errno.ESTALE, "changed since it was scanned", path)
        if advise:
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            except (AttributeError, OSError):
                pass
        return fd, st
    except BaseException:
        os.close(fd)
        raise


def open_regular(path: str, expect: Key | Stamp | None = None) -> int:
    """Open for reading without following a symlink or blocking on a FIFO; insist on a regular file."""
    return _open(path, expect, True)[0]


def stat_key(st: os.stat_result) -> Key:
    return identity.observe(st)


def stamp(st: os.stat_result) -> Stamp:
    return identity.observe(st, ctime=True)


class TimesMove(tuple):
    """A Key or Stamp of a file on a filesystem whose times move while a file is read (rclone's VFS
    shows "now" until it has uploaded a file: the probe's FsFacts.stable_mtime): "still the same
    file" is device, inode and size there, and the digest read decides (it is cached under the
    Key or Stamp itself)."""

    __slots__ = ()


def matches(st: os.stat_result, expect: Key | Stamp) -> bool:
    """The file is the one `expect` describes (a Key, or a Stamp: then its ctime too): identity.changes,
    exact, the device compared (a digest is bound to the file this host saw). A TimesMove: device,
    inode and size only."""
    if isinstance(expect, TimesMove):
        return not identity.changes(st, identity.Observed(*expect[:4]), identity.Precision(stable_mtime=False))
    return not identity.changes(st, identity.Observed(*expect))


def racy(s: Stamp, read_at_ns: int) -> bool:
    """git's "racily clean" rule: a digest read at read_at_ns proves nothing about a file whose
    mtime or ctime is not older than that moment (less a tick of the filesystem's clock): a write
    in the same tick leaves every timestamp as it was. Whole-second ctimes mean a coarse filesystem."""
    slack = COARSE_SLACK_NS if s[4] % 1_000_000_000 == 0 else FINE_SLACK_NS
    return max(s[3], s[4]) >= read_at_ns - slack


# What this process itself read: Stamp -> (digest, when the read began). A digest from here is
# evidence about the bytes; one from a cache, the catalogue or a log is a belief (see `read_here`).
_READ: dict[Stamp, tuple[str, int]] = {}


def note_read(s: Stamp, digest: str, read_at_ns: int) -> None:
    _READ[s] = (digest, read_at_ns)


def read_here(s: Stamp) -> str | None:
    """The digest this process computed from the file's bytes while it had stamp `s` (not racily)."""
    hit = _READ.get(s)
    return hit[0] if hit is not None and not racy(s, hit[1]) else None


def digest_now(path: str, on_read: Callable[[Stamp, str, int], None] | None = None) -> str:
    """The digest of the bytes at `path` (a regular file, not followed) as it is now: this process's
    own read of it if there was one (`read_here`), else read now (then `on_read(stamp, digest,
    read_ns)`, e.g. to put it in a cache). Raises OSError (ChangedError for a non-regular file)."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ChangedError(errno.EINVAL, "not a regular file", path)
    s = stamp(st)
    got = read_here(s)
    if got is None:
        at = time.time_ns()
        got = hash_path(path, s)
        note_read(s, got, at)
        if on_read is not None:
            on_read(s, got, at)
    return got


def confirm_digest(path: str, digest: str) -> bool:
    """Do the bytes at `path` have `digest`? Before a source leaves its place on the strength of a
    digest that may come from a cache, the catalogue or another run's log (see digest_now)."""
    try:
        return digest_now(path) == digest
    except ChangedError:
        return False


class _Progress:
    """Batches on_bytes calls (they may drive a progress bar shared by all workers)."""

    def __init__(self, on_bytes: OnBytes | None, lock: threading.Lock | None = None) -> None:
        self.on_bytes = on_bytes
        self.lock = lock
        self.pending = 0

    def add(self, n: int) -> None:
        if self.on_bytes is not None:
            self.pending += n
            if self.pending >= PROGRESS:
                self.flush()

    def flush(self) -> None:
        if self.on_bytes is not None and self.pending:
            n, self.pending = self.pending, 0
            if self.lock is None:
                self.on_bytes(n)
            else:
                with self.lock:
                    self.on_bytes(n)


def _read_stream(fd: int, view: memoryview, h: Hasher, progress: _Progress,
                 stop: threading.Event | None = None) -> None:
    while True:
        if stop is not None and stop.is_set():
            raise _Stopped()
        n = os.readv(fd, [view])
        if not n:
            return
        h.update(view[:n])
        progress.add(n)


def hash_fd(fd: int, buf: Buffer, on_bytes: OnBytes | None = None) -> str:
    """Digest of what is left to read from fd (sequentially, through buf)."""
    h = Hasher()
    progress = _Progress(on_bytes)
    _read_stream(fd, _aligned_view(buf), h, progress)
    progress.flush()
    return h.hexdigest()


def _pread_full(fd: int, view: memoryview, offset: int) -> int:
    """Fill view from offset (several preads if the kernel returns less); fewer bytes only at EOF."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if not n:
            break
        got += n
    return got


class _Split:
    """One large file hashed by its owner thread while idle workers read chunks ahead of it.

    Chunks of BUFFER bytes below the size seen at open are claimed in order under `cond`; the
    owner hashes them in order and reads what nobody claimed. Past the last full chunk the owner
    reads alone to EOF. A helper may run at most AHEAD chunks ahead; the owner waits for helpers
    that are still reading before the file is closed.
    """

    def __init__(self, fd: int, size: int, path: str, stop: threading.Event | None) -> None:
        self.fd, self.path, self.stop = fd, path, stop
        self.full = size // BUFFER          # chunks helpers may claim
        self.cond = threading.Condition()
        self.claimed = 0
        self.hashed = 0
        self.delivered: dict[int, tuple[memoryview, int | BaseException]] = {}
        self.spare: list[memoryview] = []
        self.reading = 0                    # helpers inside a pread
        self.closed = False

    def helpable(self) -> bool:
        return not self.closed and self.full - self.claimed >= 2

    def help(self) -> None:
        """Read chunks for the owner until none are left to claim."""
        while True:
            with self.cond:
                while not self.closed and self.claimed < self.full and self.claimed - self.hashed >= AHEAD:
                    self.cond.wait()
                if self.closed or self.claimed >= self.full:
                    return
                k = self.claimed
                self.claimed += 1
                self.reading += 1
                view = self.spare.pop() if self.spare else None
            try:
                if view is None:
                    view = memoryview(aligned_buffer(BUFFER))
                result: int | BaseException = _pread_full(self.fd, view, k * BUFFER)
            except BaseException as exc:     # delivered to the owner, who raises it
                result = exc
            with self.cond:
                self.delivered[k] = (view, result)
                self.reading -= 1
                self.cond.notify_all()

    def run(self, h: Hasher, own: memoryview, progress: _Progress) -> None:
        """The owner's part: hash every chunk in order, then the tail to EOF.

        While a helper reads the next chunk, the owner reads one further ahead itself, so both
        threads read (hashing is cheap next to the copy out of the page cache).
        """
        try:
            while self.hashed < self.full:
                if self.stop is not None and self.stop.is_set():
                    raise _Stopped()
                k = self.hashed
                with self.cond:
                    while True:
                        got = self.delivered.pop(k, None)
                        if got is not None or self.claimed == k:
                            break
                        if self.claimed < self.full and self.claimed - k < AHEAD:
                            break
                        self.cond.wait()
                    j = -1
                    if got is None:
                        j = self.claimed
                        self.claimed += 1
                        spare = None if j == k else (self.spare.pop() if self.spare else None)
                if j > k:                      # read ahead for ourselves, then look again
                    view = spare if spare is not None else memoryview(aligned_buffer(BUFFER))
                    n = _pread_full(self.fd, view, j * BUFFER)
                    with self.cond:
                        self.delivered[j] = (view, n)
                    continue
                if got is None:
                    view, result = own, _pread_full(self.fd, own, k * BUFFER)
                else:
                    view, result = got
                if isinstance(result, BaseException):
                    raise result
                if result != BUFFER:
                    raise ChangedError(errno.ESTALE, "changed while it was read (shorter)", self.path)
                h.update(view)
                progress.add(result)
                with self.cond:
                    self.hashed += 1
                    if view is not own:
                        self.spare.append(view)
                    self.cond.notify_all()
            offset = self.full * BUFFER
            while True:
                n = os.preadv(self.fd, [own], offset)
                if not n:
                    break
                h.update(own[:n])
                progress.add(n)
                offset += n
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()
                while self.reading:
                    self.cond.wait()


def _hash_open(fd: int, st: os.stat_result, path: str, view: memoryview, progress: _Progress,
               split_into: Callable[[_Split], None] | None, stop: threading.Event | None,
               extra: bool | None = None) -> str:
    """Digest of an open file: one-shot if it fits the buffer, else streamed or split.
    `extra`: Hasher's (False: xxh3 only)."""
    h = Hasher(extra)
    if st.st_size < len(view):
        n = os.readv(fd, [view])
        m = os.readv(fd, [view[n:]]) if 0 < n < len(view) else 0    # 0: EOF, as expected
        if n < len(view) and not m:
            progress.add(n)
            return one_shot(view[:n], extra)
        h.update(view[:n + m])         # it grew: stream the rest (the caller's check reports it)
        progress.add(n + m)
    elif split_into is not None and st.st_size >= SPLIT and len(view) == BUFFER:
        split = _Split(fd, st.st_size, path, stop)
        split_into(split)
        split.run(h, view, progress)
        return h.hexdigest()
    _read_stream(fd, view, h, progress, stop)
    return h.hexdigest()


def _hash_one(path: str, expect: Key | Stamp | None, view: memoryview, progress: _Progress,
              split_into: Callable[[_Split], None] | None = None,
              stop: threading.Event | None = None, keep: bool = False, extra: bool | None = None) -> str:
    at = time.time_ns() if keep else 0
    fd, st = _open(path, expect, advise=expect is None or expect[2] >= LARGE)
    try:
        digest = _hash_open(fd, st, path, view, progress, split_into, stop, extra)
        after = os.fstat(fd)
        if expect is not None and not matches(after, expect):
            raise ChangedError(errno.ESTALE, "changed while it was read", path)
        if keep and not identity.changes(after, stamp(st)):     # not changed while it was read
            _KEEP[stamp(st)] = (digest, at)
        return digest
    finally:
        os.close(fd)


# Reads by hash_path (rollback's and purge's re-reads, identity.same_file, ...): Stamp -> (digest, when
# the read began), for `keep_reads` to put in the user's digest cache with their SHA-256 and BLAKE3, as
# scan, verify and audit do. Only a file whose stat data did not change during the read is kept. Not
# evidence for this process's own decisions (that is `_READ`, filled by digest_now).
_KEEP: dict[Stamp, tuple[str, int]] = {}


def keep_reads(cache: DigestCache | None) -> None:
    """Put what hash_path read into `cache` (its trust rule applies when it is read) and save it."""
    if cache is None or not _KEEP:
        return
    for s, (digest, at) in list(_KEEP.items()):
        cache.put(s, digest, at)
    _KEEP.clear()
    cache.save()


def hash_path(path: str, expect: Key | Stamp | None = None, buf: Buffer | None = None,
              on_bytes: OnBytes | None = None) -> str:
    """Digest of a regular file; raises ChangedError if it is not the scanned one or changes meanwhile.

    A large file is read by this thread and one helper thread (when there are two cores).
    """
    view = _aligned_view(buf) if buf is not None else _thread_buffer()
    progress = _Progress(on_bytes)
    helpers: list[threading.Thread] = []

    def split_into(split: _Split) -> None:
        t = threading.Thread(target=split.help, name="hash-helper", daemon=True)
        t.start()
        helpers.append(t)

    try:
        return _hash_one(path, expect, view, progress,
                         split_into if (os.cpu_count() or 1) >= 2 and len(view) == BUFFER else None, keep=True)
    finally:
        for t in helpers:
            t.join()
        progress.flush()


PART = 16 << 10     # bytes read from each end of a file for its partial digest


def partial_digest(path: str, expect: Key | Stamp) -> str:
    """Digest of a file's first and last PART bytes (with its size): cheap evidence that two
    same-size files differ. Equal partial digests prove nothing; only full digests prove equality.
    Raises ChangedError like hash_path when the file is not the scanned one."""
    fd, st = _open(path, expect, advise=False)
    try:
        view = _thread_buffer()[:2 * PART]
        got = _pread_full(fd, view[:PART], 0)
        got += _pread_full(fd, view[PART:2 * PART], max(st.st_size - PART, 0))
        if not matches(os.fstat(fd), expect):
            raise ChangedError(errno.ESTALE, "changed while it was read", path)
        return xxhash.xxh3_128_hexdigest(view[:got])
    finally:
        os.close(fd)


def hash_bytes(data: bytes) -> str:
    return xxhash.xxh3_128(data).hexdigest()


# Also created by sniff.VerdictCache, which keeps its verdicts in another table of the same file.
# (Version 1's `digests` table, keyed without ctime, is ignored: its entries cannot be trusted.)
DIGESTS_TABLE = ("CREATE TABLE IF NOT EXISTS digests2 (dev INTEGER, ino INTEGER, size INTEGER,"
                 " mtime_ns INTEGER, ctime_ns INTEGER, read_ns INTEGER, digest TEXT, PRIMARY KEY (dev, ino))")
# SHA-256 and BLAKE3 of content by its xxh3 digest (see Hasher): read with the digests2 rows, trusted
# exactly as far as a digests2 row naming that xxh3 digest is trusted (DigestCache.get_all).
HASHES_TABLE = "CREATE TABLE IF NOT EXISTS hashes3 (digest TEXT PRIMARY KEY, sha256 TEXT, blake3 TEXT)"
_U64 = 1 << 64


def to_sql(n: int) -> int:
    """An unsigned 64-bit number (a FUSE inode may be >= 2**63) as SQLite's signed INTEGER."""
    return n - _U64 if n >= 1 << 63 else n


def from_sql(n: int) -> int:
    return n + _U64 if n < 0 else n


class DigestCache:
    """Digests in a small SQLite file, trusted like git's index trusts its stat data.

    An entry holds (device, inode) -> (size, mtime_ns, ctime_ns, when its read began, digest). It is
    used only while size, mtime AND ctime all match (no user can set ctime: an in-place rewrite with
    the mtime put back, or a freed inode reused by a new file, changes it) and the file was not
    racily clean when read (`racy`). Loaded whole at open (one query), written in one transaction
    at save. A damaged cache is discarded, never trusted.
    """

    def __init__(self, path: str | None) -> None:
        # Absolute now: a relative COMFY_MIGRATE_CACHE has no folder part, and save()'s makedirs("")
        # would fail (silently: the cache was never written).
        self.path = path = os.path.abspath(path) if path else path
        self._known: dict[tuple[int, int], tuple[int, int, int, int, str]] = {}
        self._new: dict[tuple[int, int], tuple[int, int, int, int, str]] = {}
        if path and os.path.exists(path):
            import sqlite3   # only when there is a cache: keeps start-up short
            try:
                rows = load_rows(path, "SELECT dev, ino, size, mtime_ns, ctime_ns, read_ns, digest FROM digests2")
                self._known = {(from_sql(d), from_sql(i)): (s, m, c, t, h) for d, i, s, m, c, t, h in rows}
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):     # an older cache: starts empty, kept
                    self._discard()
            except sqlite3.Error:
                self._discard()
            if self._known:
                try:
                    self._extras = {d: (a, b) for d, a, b in load_rows(path, "SELECT digest, sha256, blake3 FROM hashes3")
                                    if isinstance(a, str) and isinstance(b, str)}
                except sqlite3.Error:
                    pass            # a cache from before hashes3: xxh3 only, the others come with the next read

    _extras: dict[str, tuple[str, str]] = {}

    def _discard(self) -> None:
        self._known = {}
        try:
            os.replace(self.path, self.path + ".damaged")
        except OSError:
            pass

    def get(self, s: Stamp) -> str | None:
        """The digest read from the bytes of the file with stamp `s`, if the entry for its device and
        inode still describes it (identity.same: size, mtime and ctime exactly) and was not read racily."""
        now = identity.Observed(*s)
        hit = self._new.get(s[:2]) or self._known.get(s[:2])
        if hit and hit[2] is not None and identity.same(now, now._replace(size=hit[0], mtime_ns=hit[1], ctime_ns=hit[2])) \
                and not racy(s, hit[3]):
            more = self._extras.get(hit[4])
            if more is not None and hit[4] not in _EXTRAS:
                remember_extras(hit[4], *more)
            return hit[4]
        return None

    def get_all(self, s: Stamp) -> tuple[str, str | None, str | None] | None:
        """(xxh3, sha256, blake3) of the file with stamp s under get's trust rule (None: not trusted);
        sha256 and blake3 are None for an entry read before they were computed."""
        digest = self.get(s)
        return None if digest is None else (digest,) + (extras(digest) or (None, None))

    def lacking(self) -> int:
        """Entries (known or new) whose content has no SHA-256/BLAKE3 yet."""
        rows = {**self._known, **self._new}
        return sum(1 for r in rows.values() if extras(r[4]) is None and r[4] not in self._extras)

    def put(self, s: Stamp, digest: str, read_ns: int) -> None:
        """Remember a digest read from the bytes of the file with stamp s, a read begun at read_ns."""
        self._new[s[:2]] = (s[2], s[3], s[4], read_ns, digest)

    def save(self) -> None:
        if not self.path or not self._new:
            return
        more = [(h,) + extras(h) for (_, _, _, _, h) in self._new.values() if extras(h) is not None]
        if save_rows(self.path, (DIGESTS_TABLE,), "INSERT OR REPLACE INTO digests2 VALUES (?, ?, ?, ?, ?, ?, ?)",
                     [(to_sql(d), to_sql(i), s, m, c, t, h) for (d, i), (s, m, c, t, h) in self._new.items()]):
            if more:
                save_rows(self.path, (HASHES_TABLE,), "INSERT OR REPLACE INTO hashes3 VALUES (?, ?, ?)", more)
            self._known.update(self._new)
            self._new.clear()


def load_rows(path: str, sql: str, params: tuple = ()) -> list:
    """All rows of one query on the cache file (raises sqlite3.Error for a damaged file)."""
    import sqlite3
    con = sqlite3.connect(path)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def save_rows(path: str, tables: Sequence[str], insert: str, rows: list) -> bool:
    """Write rows in one transaction, creating the tables first; False when the cache cannot be
    written (that only costs time next run)."""
    import sqlite3
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        con = sqlite3.connect(path, timeout=30)
        try:
            with con:
                for create in tables:
                    con.execute(create)
                con.executemany(insert, rows)
        finally:
            con.close()
        return True
    except (sqlite3.Error, OSError):
        return False


def default_cache_path() -> str:
    explicit = os.environ.get("COMFY_MIGRATE_CACHE")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "comfy-migrate", "digests.sqlite")


Result = tuple[str | None, OSError | None]


def _hash_small(jobs: Sequence[tuple[str, Key | Stamp]], indices: Sequence[int], results: list[Result],
                view: memoryview, progress: _Progress, stop: threading.Event) -> None:
    """Small files one after the other on this thread: open, fstat, one read, fstat, close.

    The read that would confirm EOF is skipped: a file that grew after the first fstat has
    another size or mtime at the second one.
    """
    limit = len(view)
    for i in indices:
        if stop.is_set():
            raise _Stopped()
        path, key = jobs[i]
        try:
            fd = os.open(path, OPEN_FLAGS)
        except OSError as exc:
            results[i] = (None, exc)
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ChangedError(errno.EINVAL, "not a regular file", path)
            if not matches(st, key):
                raise ChangedError(errno.ESTALE, "changed since it was scanned", path)
            n = os.readv(fd, [view])
            if n == key[2] and n < limit:
                digest = one_shot(view[:n])
            else:
                h = Hasher()
                h.update(view[:n])
                if n:
                    _read_stream(fd, view, h, progress, stop)
                digest = h.hexdigest()
            if not matches(os.fstat(fd), key):
                raise ChangedError(errno.ESTALE, "changed while it was read", path)
            results[i] = (digest, None)
            progress.add(n)
        except OSError as exc:
            results[i] = (None, exc)
        finally:
            os.close(fd)


def hash_many(
    jobs: Sequence[tuple[str, Key | Stamp]],
    on_bytes: OnBytes | None = None,
    workers: int | None = None,
    light: frozenset[int] = frozenset(),
) -> list[Result]:
    """Hash files on worker threads; returns (digest, error) per job, in order.

    `light`: indices of large jobs read for xxh3 alone (their SHA-256 and BLAKE3 are left to the
    copy that reads them next: scan.hash_records).

    The small files are one task (one thread, one buffer); each large file is a task, largest
    first. A worker that finds no task left helps read the large files still being hashed. The
    caller's thread only waits (an interrupt stops the workers at their next chunk).
    """
    results: list[Result] = [(None, None)] * len(jobs)
    if not jobs:
        return results
    workers = max(1, workers or min(4, os.cpu_count() or 1))
    small = [i for i, (_, key) in enumerate(jobs) if key[2] < LARGE]
    large = sorted((i for i, (_, key) in enumerate(jobs) if key[2] >= LARGE), key=lambda i: (-jobs[i][1][2], i))
    tasks: list[str | int] = (["small"] if small else []) + large
    tasks.reverse()                               # popped from the end
    splits: list[_Split] = []
    sched = threading.Condition()                 # guards tasks, splits and running
    running = [0]                                 # tasks being hashed
    report_lock = threading.Lock()
    stop = threading.Event()
    failures: list[BaseException] = []
    workers = min(workers, len(tasks) + (1 if large else 0))

    def hash_into(i: int, view: memoryview, progress: _Progress, split_into) -> None:
        path, key = jobs[i]
        try:
            results[i] = (_hash_one(path, key, view, progress, split_into, stop,
                                    extra=False if i in light else None), None)
        except OSError as exc:
            results[i] = (None, exc)

    def split_into(split: _Split) -> None:
        with sched:
            splits.append(split)
            sched.notify_all()

    def next_work() -> tuple[str | int | None, _Split | None]:
        """A task, else a split to help, else (None, None) once nothing can come any more."""
        with sched:
            while not stop.is_set():
                if tasks:
                    running[0] += 1
                    return tasks.pop(), None
                live = [s for s in splits if s.helpable()]
                if live:
                    return None, max(live, key=lambda s: s.full - s.claimed)
                if not running[0]:
                    break
                sched.wait()      # a task still running may open a large file worth helping
            return None, None

    def worker() -> None:
        view = _thread_buffer()
        progress = _Progress(on_bytes, report_lock)
        try:
            while True:
                task, helping = next_work()
                if helping is not None:
                    helping.help()
                    continue
                if task is None:
                    return
                try:
                    if task == "small":
                        _hash_small(jobs, small, results, view, progress, stop)
                    else:
                        hash_into(int(task), view, progress, split_into if workers > 1 else None)
                finally:
                    with sched:
                        running[0] -= 1
                        splits[:] = [s for s in splits if not s.closed]
                        sched.notify_all()
        except _Stopped:
            return
        except BaseException as exc:   # a bug, not a file problem: raised in the caller's thread
            failures.append(exc)
            halt()
        finally:
            progress.flush()

    def halt() -> None:
        stop.set()
        with sched:
            sched.notify_all()

    threads = [threading.Thread(target=worker, name=f"hash-{n}", daemon=True) for n in range(workers)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except BaseException:
        halt()
        for t in threads:
            t.join(timeout=10)
        raise
    if failures:
        raise failures[0]
    return results
