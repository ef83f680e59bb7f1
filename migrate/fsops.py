"""The only module that changes the disk: probes, no-clobber publish, copy+hash, links, atomic writes.

Every data write goes through `write_all` so faults can be injected in one place.
"""
from __future__ import annotations

import errno
import os
import stat
from functools import lru_cache
from typing import Callable, Optional, Tuple

import xxhash

from migrate.hashing import Key, aligned_buffer, open_regular, stat_key
from migrate.model import Probe

COPY_CHUNK = 256 << 10     # 256 KiB writes stay on the page cache's fast path here
TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
FALLBACK_ERRNOS = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS,
                   errno.EACCES)

AT_FDCWD = -100
RENAME_NOREPLACE = 1


# --- facts (read-only or self-cleaning) -------------------------------------------------------------

def nearest_existing(path: str) -> str:
    while not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def free_space(path: str) -> int:
    st = os.statvfs(nearest_existing(path))
    return st.f_bavail * st.f_frsize


def _restore_dir_times(path: str, st: os.stat_result) -> None:
    try:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    except OSError:
        pass


def probe_link(sample: Optional[str], source_root: str, target: str) -> Probe:
    """Try a hardlink from a real source file into the target's filesystem, then remove it.

    Uses an existing source file, so the source tree is not written to; the target-side folder's
    times are put back. A rename is possible where a link is (same mount); where links are refused
    for another reason than EXDEV on one device, a rename is assumed and checked per step.
    """
    where = nearest_existing(target)
    if sample is None:
        same = os.stat(source_root).st_dev == os.stat(where).st_dev
        return Probe(source_root, False, same, "no file to probe with; judged by device")
    before = os.stat(where)
    probe = os.path.join(where, f".comfy-migrate-probe-{os.getpid()}")
    try:
        os.link(sample, probe, follow_symlinks=False)
    except OSError as exc:
        same = os.stat(source_root).st_dev == before.st_dev and exc.errno != errno.EXDEV
        return Probe(source_root, False, same, f"hardlink refused: {errno.errorcode.get(exc.errno, exc.errno)}")
    else:
        os.unlink(probe)
        return Probe(source_root, True, True, "")
    finally:
        _restore_dir_times(where, before)


def probe_target_hardlinks(target: str) -> bool:
    """Can the target hold two names for one file? Tried with a scratch file, then removed."""
    where = nearest_existing(target)
    before = os.stat(where)
    a = os.path.join(where, f".comfy-migrate-probe-{os.getpid()}-a")
    b = a[:-1] + "b"
    try:
        fd = os.open(a, TMP_FLAGS, 0o600)
        os.close(fd)
        try:
            os.link(a, b)
            os.unlink(b)
            return True
        except OSError:
            return False
        finally:
            os.unlink(a)
    except OSError:
        return False
    finally:
        _restore_dir_times(where, before)


# --- writes ------------------------------------------------------------------------------------------

def write_all(fd: int, data) -> None:
    """All data writes go through here (the one place faults are injected in tests)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@lru_cache(maxsize=None)
def _renameat2():
    """libc's renameat2 (None where missing), loaded on first use: ctypes is a noticeable part of a
    short command's start-up. CDLL(None) searches the libraries already mapped into the process;
    find_library would run `ldconfig -p` in a child process."""
    import ctypes
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:
        return None


def rename_noreplace(src: str, dst: str) -> None:
    """rename(2) that fails with EEXIST instead of replacing (plain os.rename overwrites)."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        import ctypes
        r = renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE)
        if r == 0:
            return
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(e, os.strerror(e), src, None, dst)
    # The flag is unsupported here (FUSE answers EINVAL): link + unlink, or a checked rename.
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise
        if os.path.lexists(dst):
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), dst) from None
        os.rename(src, dst)
        return
    os.unlink(src)


def link_noreplace(src: str, dst: str) -> None:
    os.link(src, dst, follow_symlinks=False)


def _copy_plain(sfd: int, dfd: int, h: "xxhash.xxh3_128", on_bytes: Optional[Callable[[int], None]]) -> None:
    """One pass: read into a page-aligned buffer (a bytearray's odd offset made copies of 512 MiB
    10-20 % slower here, see hashing.py), hash, write. A second thread writing while this one reads
    measured no faster on these 2 cores (the writes into the page cache dominate)."""
    view = memoryview(aligned_buffer(COPY_CHUNK))
    while True:
        n = os.readv(sfd, [view])
        if not n:
            return
        chunk = view[:n]
        h.update(chunk)
        write_all(dfd, chunk)
        if on_bytes is not None:
            on_bytes(n)


def copy_and_hash(src: str, expect: Key, tmp: str, on_bytes: Optional[Callable[[int], None]] = None,
                  on_created: Optional[Callable[[os.stat_result], None]] = None) -> Tuple[str, os.stat_result]:
    """Copy src into a new file `tmp` (O_EXCL) while hashing, fsync it, keep mode and mtime.

    Returns (digest of the bytes read, stat of tmp). The source must still be the scanned file
    afterwards. On any error tmp is removed.
    """
    sfd = open_regular(src, expect)
    try:
        dfd = os.open(tmp, TMP_FLAGS, 0o600)
    except BaseException:
        os.close(sfd)
        raise
    ok = False
    try:
        if on_created is not None:
            on_created(os.fstat(dfd))
        h = xxhash.xxh3_128()
        _copy_plain(sfd, dfd, h, on_bytes)
        if stat_key(os.fstat(sfd)) != expect:
            raise OSError(errno.ESTALE, "changed while it was copied", src)
        st = os.fstat(sfd)
        os.fchmod(dfd, stat.S_IMODE(st.st_mode))
        os.fsync(dfd)
        os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
        dst_st = os.fstat(dfd)
        ok = True
        return h.hexdigest(), dst_st
    finally:
        os.close(sfd)
        try:
            os.close(dfd)   # network filesystems report "disk full" here
        except OSError:
            ok = False
            raise
        finally:
            if not ok:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write a small file atomically: temp in the same folder, fsync, replace, fsync the folder."""
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".{os.path.basename(path)}.cm-tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(folder)


def through_link(path: str) -> str:
    """The file behind a YAML path that is a symlink (kept on the volume, linked into ComfyUI):
    ComfyUI reads through the link, so we read and write the file behind it and keep the link."""
    return os.path.realpath(path) if os.path.islink(path) else path


def read_file(path: str, limit: int = 16 << 20) -> Optional[bytes]:
    """Bytes of a small regular file, or None if it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        with open(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise OSError(errno.EFBIG, "too large", path)
        return data
    finally:
        os.close(fd)
