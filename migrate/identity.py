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
from typing import Mapping, Optional


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


def same_time(a: int, b: int, p: Precision = EXACT) -> bool:
    """Two mtimes are one within the filesystem's step (it may truncate or round)."""
    return a == b if p.mtime_step_ns <= 1 else abs(a - b) < p.mtime_step_ns


def differs(st: os.stat_result, size: int, mtime_ns: int, ino: Optional[int], p: Precision = EXACT) -> str:
    """'' when stat data says this is the logged file (inode only where inodes are stable), else what
    differs: 'inode', 'size' or 'mtime'."""
    if p.stable_inode and ino is not None and st.st_ino != ino:
        return "inode"
    if st.st_size != size:
        return "size"
    if p.stable_mtime and not same_time(st.st_mtime_ns, mtime_ns, p):
        return "mtime"
    return ""


def same_file(path: str, size: int, mtime_ns: int, ino: Optional[int], digest: Optional[str],
              p: Precision = EXACT) -> bool:
    """Is `path` (not followed) still the logged file? Stat first; where inodes or mtimes are not
    stable a matching stat is confirmed by the digest (another file of the same size is possible)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or differs(st, size, mtime_ns, ino, p):
        return False
    if (p.stable_inode and p.stable_mtime) or digest is None:
        return True
    from migrate.hashing import hash_path
    return hash_path(path) == digest
