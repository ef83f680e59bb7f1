"""One rule for "is this still the same file", at the precision the filesystem keeps (style.md item 12).

A run logs what it observed of each file (inode, size, mtime: the destination's own stat after each
publish, not the source's). A later check compares the file with that record at the precision the
probe measured for its filesystem (fsops.probe_fs): MooseFS, exFAT, ntfs-3g, s3fs and ext4 made
with `-I 128` keep coarser mtimes than the nanoseconds a source on ext4 had, and the copy reads back
rounded. Where inode numbers are not stable (sshfs, mergerfs, rclone: numbers per path, or changed
by a rename) the inode says nothing, and the file is recognised by size + mtime + digest: content is
read only when stat cannot decide (git's ie_modified -> ce_modified_check_fs). Where the mtime moves
under us (rclone's VFS shows "now" while a file it has not uploaded yet is open, even for reading)
the mtime says nothing either, and the same holds. A store whose probes disagree (rclone's inode
numbers survive one rename and not the next) is judged by the weakest facts any probe saw
(`weakest`; the store keeps them in its state folder: see fsops.remember_weakest).
"""
from __future__ import annotations

import os
import stat
from collections import namedtuple
from collections.abc import Mapping
from enum import Enum

TYPE_CHECKING = False
if TYPE_CHECKING:       # typing is not imported at run time (scan's start-up: hashing imports this)
    from typing import Callable, Optional


class Dev(Enum):
    """The named policy for the device number (git's USE_STDEV), chosen by whoever compares.

    COMPARE: the same host and mount since the observation (a scan, then the run it plans, in one
        process): a file on another device is another file.
    IGNORE: the observation may come from another pod or an earlier mount (a run's log, the store's
        catalogue): a network or FUSE volume gets a new st_dev per mount, so the inode decides alone.
    """
    COMPARE = "compare"
    IGNORE = "ignore"


class Observed(namedtuple("Observed", ["dev", "ino", "size", "mtime_ns", "ctime_ns"], defaults=(None,))):
    """What stat said of a file when it was looked at (git's stat_data). `ctime_ns` None: not kept
    (a log records no ctime), so not compared; a digest cache keeps it (no user can set it back)."""

    __slots__ = ()


def observe(st: os.stat_result, ctime: bool = False) -> Observed:
    return Observed(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns if ctime else None)


class Precision(namedtuple("Precision", ["mtime_step_ns", "stable_inode", "stable_mtime"], defaults=(1, True, True))):
    """What a filesystem's stat data can tell: its mtime step, whether inode numbers identify a file,
    and whether a file's mtime stays as set while it is read (False: the mtime says nothing)."""

    __slots__ = ()


EXACT = Precision()


def precision_of(doc: Optional[Mapping]) -> Precision:
    """A run header's record of one root's filesystem (absent in logs of earlier versions: exact)."""
    if not isinstance(doc, Mapping):
        return EXACT
    step = doc.get("mtime_step_ns", 1)
    return Precision(step if isinstance(step, int) and step > 0 else 1, doc.get("stable_inode", True) is not False,
                     doc.get("stable_mtime", True) is not False)


def weakest(*docs: Optional[Mapping]) -> dict:
    """One filesystem record (a run header's `fs` entry, FsFacts.as_record) holding the weakest of
    what every given record says: the coarsest mtime step, inodes or mtimes stable only if every
    probe found them so. A store whose facts flip between probes is judged by the worst seen."""
    out: dict = {}
    for d in docs:
        if not isinstance(d, Mapping):
            continue
        p = precision_of(d)
        if not out:
            out = dict(d)
        out["mtime_step_ns"] = max(out.get("mtime_step_ns", 1) if isinstance(out.get("mtime_step_ns"), int) else 1,
                                   p.mtime_step_ns)
        out["stable_inode"] = out.get("stable_inode", True) is not False and p.stable_inode
        out["stable_mtime"] = out.get("stable_mtime", True) is not False and p.stable_mtime
    return out


def precisions(head, seen: "Optional[Mapping]" = None) -> "Callable[[str], Precision]":
    """path -> the precision of its filesystem: the weakest of what the run's header and every resume
    record of a continued run recorded for its root (each its own probe), and of `seen` (root ->
    the facts the store remembers and a probe at rollback time found: see fsops.remember_weakest).
    `head`: the header record, or all the run's records. A log of an earlier version has none: exact."""
    heads = [r for r in head if r.get("type") in ("header", "resume")] if isinstance(head, list) else [head]
    fs: dict = {}
    for h in heads + [{"fs": seen or {}}]:
        for root, doc in (h.get("fs") if isinstance(h.get("fs"), Mapping) else {}).items():
            if isinstance(root, str) and isinstance(doc, Mapping):
                fs[root] = weakest(fs.get(root), doc)
    roots = sorted((r for r in fs if isinstance(r, str)), key=len, reverse=True)

    def of(path: str) -> Precision:
        root = next((r for r in roots if isinstance(path, str) and path.startswith(r.rstrip("/") + "/")), None)
        return precision_of(fs.get(root)) if root else EXACT
    return of


def same_time(a: int, b: int, p: Precision = EXACT) -> bool:
    """Two mtimes are one within the filesystem's step (it may truncate or round)."""
    return a == b if p.mtime_step_ns <= 1 else abs(a - b) < p.mtime_step_ns


def changes(st: os.stat_result, seen: Observed, p: Precision = EXACT, dev: Dev = Dev.COMPARE) -> tuple:
    """What differs between a file's stat now and what was observed of it (git's match_stat_data):
    a tuple of 'dev', 'inode', 'size', 'mtime', 'ctime' in that order, empty when stat data says it
    is the same file. The inode counts only where the filesystem keeps inodes stable (`p`), the
    device only under Dev.COMPARE, mtime within the filesystem's step (and only where it stays put
    while a file is read: not on rclone, see `Precision`), ctime only where it was kept.
    Stat data cannot prove the bytes are the same (an in-place rewrite with its times put back):
    where a byte is about to be freed, `same_bytes` reads them."""
    out = []
    if dev is Dev.COMPARE and seen.dev is not None and st.st_dev != seen.dev:
        out.append("dev")
    if p.stable_inode and seen.ino is not None and st.st_ino != seen.ino:
        out.append("inode")
    if seen.size is not None and st.st_size != seen.size:
        out.append("size")
    if p.stable_mtime and seen.mtime_ns is not None and not same_time(st.st_mtime_ns, seen.mtime_ns, p):
        out.append("mtime")
    if seen.ctime_ns is not None and st.st_ctime_ns != seen.ctime_ns:
        out.append("ctime")
    return tuple(out)


def differs(st: os.stat_result, size: int, mtime_ns: int, ino: Optional[int], p: Precision = EXACT) -> str:
    """'' when stat data says this is the logged file (inode only where inodes are stable), else what
    differs first: 'inode', 'size' or 'mtime' (`changes` of a logged record: the device not compared)."""
    found = changes(st, Observed(None, ino, size, mtime_ns), p, Dev.IGNORE)
    return found[0] if found else ""


def same_file(path: str, size: int, mtime_ns: int, ino: Optional[int], digest: Optional[str],
              p: Precision = EXACT) -> bool:
    """Is `path` (not followed) still the logged file? Stat first; where inodes or mtimes are not
    stable a matching stat is confirmed by the digest (another file of the same size is possible)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or changes(st, Observed(None, ino, size, mtime_ns), p, Dev.IGNORE):
        return False
    if (p.stable_inode and p.stable_mtime) or digest is None:     # content is read only when stat cannot decide
        return True
    from migrate.disk.hashing import hash_path
    return hash_path(path) == digest
