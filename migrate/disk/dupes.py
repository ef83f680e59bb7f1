"""Find files with the same content, reading as little as possible (`scan --duplicates`).

As jdupes and rmlint do: only files whose size another file shares can be duplicates; of those, a
large file is first told apart by a partial digest (its first and last 16 KiB), and only files
still alike are hashed in full. Small files are hashed in full at once (one read either way).
Full digests come from the digest cache where it has them, and new ones go into it.

Hardlinks: names of one inode are one copy, never duplicates of each other (removing one frees
nothing). A group is content held by at least two inodes; each copy lists all its names.

Its records are collections.namedtuple classes, as in model.py (and for the same reason: neither
`dataclasses` nor `typing` on the path of `scan`).
"""
from __future__ import annotations

import time
from collections import namedtuple
from collections.abc import Callable, Sequence

from migrate.disk.hashing import DigestCache, Stamp, hash_many, note_read, partial_digest
from migrate.core.model import FileRecord, Problem, ScanResult

DIRECT = 256 << 10     # files up to this size are hashed in full at once (a partial read costs as much)

Inode = tuple[int, int]


class Copy(namedtuple("Copy", [
    "names",                      # tuple[str, ...]
])):
    """One inode holding the content, with every scanned name it has (sorted)."""

    __slots__ = ()


class DuplicateGroup(namedtuple("DuplicateGroup", [
    "digest",                     # str
    "size",                       # int
    "copies",                     # tuple[Copy, ...]: sorted by first name
])):
    """Content stored in two or more inodes: all but one copy could go."""

    __slots__ = ()

    @property
    def redundant_bytes(self) -> int:
        return self.size * (len(self.copies) - 1)


class Duplicates(namedtuple("Duplicates", [
    "groups",                     # tuple[DuplicateGroup, ...]: most redundant bytes first, then by first name
    "problems",                   # tuple[Problem, ...]
    "files",                      # int: files considered (complete model files)
    "hashed_files",               # int: files read in full
    "partial_files",              # int: files of which only the ends were read
    "cached_files",               # int: full digests taken from the cache
])):
    """What `scan --duplicates` found, with counts of how much it read to find it."""

    __slots__ = ()


def find_duplicates(scans: Sequence[ScanResult], cache: DigestCache | None,
                    on_bytes: Callable[[int], None] | None = None) -> Duplicates:
    """Group the files to migrate of all scans by content, hashing only what could be a duplicate."""
    inodes: dict[Inode, list[FileRecord]] = {}
    for s in scans:
        for r in s.records:
            if r.status.migrates:
                inodes.setdefault((r.dev, r.ino), []).append(r)
    by_size: dict[int, list[Inode]] = {}
    for ino, recs in inodes.items():
        by_size.setdefault(recs[0].size, []).append(ino)
    candidates = [group for group in by_size.values() if len(group) > 1]

    problems: list[Problem] = []
    full: dict[Inode, str] = {}
    cached = 0

    def key(ino: Inode) -> Stamp:
        return inodes[ino][0].stamp

    def failed(ino: Inode, err: OSError) -> None:
        full.pop(ino, None)      # a cached digest no longer describes a file that changed
        problems.append(Problem(inodes[ino][0].path, f"{err.strerror or err}"))

    # Full digests already known; small files are hashed in full right away.
    to_hash: list[Inode] = []
    partial_groups: list[list[Inode]] = []
    for group in candidates:
        unknown = []
        for ino in group:
            hit = cache.get(key(ino)) if cache is not None else None
            if hit is not None:
                full[ino] = hit
                cached += 1
            else:
                unknown.append(ino)
        if not unknown:
            continue
        if inodes[group[0]][0].size <= DIRECT:
            to_hash += unknown
        else:
            partial_groups.append(group)      # cached members are compared by their ends too

    # Large files: the ends first; only files whose ends match another's are read in full.
    partial_files = 0
    for group in partial_groups:
        ends: dict[str, list[Inode]] = {}
        for ino in group:
            try:
                ends.setdefault(partial_digest(inodes[ino][0].path, key(ino)), []).append(ino)
                partial_files += 1
            except OSError as exc:
                failed(ino, exc)
        for alike in ends.values():
            if len(alike) > 1:
                to_hash += [ino for ino in alike if ino not in full]

    jobs = [(inodes[ino][0].path, key(ino)) for ino in to_hash]
    read_at = time.time_ns()
    for ino, job, (digest, err) in zip(to_hash, jobs, hash_many(jobs, on_bytes)):
        if err is not None:
            failed(ino, err)
            continue
        full[ino] = digest
        note_read(job[1], digest, read_at)
        if cache is not None:
            cache.put(job[1], digest, read_at)
    if cache is not None:
        cache.save()

    contents: dict[tuple[int, str], list[Inode]] = {}
    for ino, digest in full.items():
        contents.setdefault((inodes[ino][0].size, digest), []).append(ino)
    groups = []
    for (size, digest), inos in contents.items():
        if len(inos) > 1:
            copies = sorted((Copy(tuple(sorted(r.path for r in inodes[i]))) for i in inos),
                            key=lambda c: c.names)
            groups.append(DuplicateGroup(digest, size, tuple(copies)))
    groups.sort(key=lambda g: (-g.redundant_bytes, g.copies[0].names))
    return Duplicates(tuple(groups), tuple(problems), sum(len(v) for v in inodes.values()), len(jobs),
                      partial_files, cached)
