"""Walk model trees (sorted, lstat, never following a link out) and classify every entry.

Yields facts only; hashing is a separate pass (`hash_records`) so the walk stays cheap.
"""
from __future__ import annotations

import os
import stat
import sys
from dataclasses import replace
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

from migrate import comfy
from migrate.hashing import DigestCache, hash_many
from migrate.model import STATE_DIR, FileRecord, Problem, ScanResult, Status

TEMP_MARK = ".cm-tmp-"     # our temporary files: .<name>.cm-tmp-<run id>


def _bad_name(name: str) -> bool:
    """Not valid UTF-8: os.fsdecode left surrogate escapes in it (which cannot be encoded)."""
    if name.isascii():
        return False
    try:
        name.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def classify(rel: str, st: os.stat_result) -> Tuple[Status, str]:
    """The status of one entry from its name and lstat alone."""
    base = rel.rsplit("/", 1)[-1]
    lower = base.lower()
    if stat.S_ISLNK(st.st_mode):
        return Status.SYMLINK, "symlink (left as it is)"
    if not stat.S_ISREG(st.st_mode):
        return Status.SPECIAL, "not a regular file (socket, FIFO or device)"
    if TEMP_MARK in base:
        return Status.TEMP, "temporary file of an interrupted comfy-migrate run"
    if "/" not in rel:
        return Status.UNCATEGORISED, "not in a category folder"
    if _bad_name(rel):
        return Status.BAD_NAME, "name is not valid UTF-8; rename it to migrate it"
    if lower.startswith("put_") and "_here" in lower:
        return Status.PLACEHOLDER, "ComfyUI placeholder"
    if lower.endswith(comfy.INCOMPLETE_SUFFIXES):
        return Status.INCOMPLETE, "incomplete download"
    if st.st_size == 0:
        return Status.EMPTY, "empty file"
    return Status.MIGRATE, ""


def walk(root: str, on_error: Optional[Callable[[OSError], None]] = None) -> Iterator[Tuple[str, os.stat_result]]:
    """Yield (relative path, lstat) for every non-directory entry below root, sorted by name.

    Symlinked folders are yielded as entries and not entered; our state folder and `.git` are skipped.
    An unreadable folder or a vanished entry goes to on_error and the walk goes on (without
    on_error it is raised, which ends the walk).
    """
    stack: List[Tuple[str, str]] = [(root, "")]
    while stack:
        path, rel = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if on_error is None:
                raise
            on_error(exc)
            continue
        subdirs = []
        for e in entries:
            erel = f"{rel}/{e.name}" if rel else e.name
            if e.name == ".git" or (not rel and e.name == STATE_DIR):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError as exc:
                if on_error is None:
                    raise
                on_error(exc)
                continue
            if stat.S_ISDIR(st.st_mode):
                subdirs.append((e.path, erel))
            else:
                yield erel, st
        stack.extend(reversed(subdirs))


def scan_tree(root: str) -> ScanResult:
    """Stat facts of every entry under one root (no digests yet)."""
    records: List[FileRecord] = []
    problems: List[Problem] = []

    def on_error(exc: OSError) -> None:
        gone = isinstance(exc, FileNotFoundError)
        problems.append(Problem(exc.filename or root, f"{'vanished during the scan' if gone else 'cannot read'}: "
                                f"{exc.strerror}"))

    for rel, st in walk(root, on_error):
        folder = sys.intern(rel.split("/", 1)[0]) if "/" in rel else ""     # one string per folder
        category, custom = comfy.category_of(folder) if folder else (None, False)
        status, detail = classify(rel, st)
        target = None
        if status is Status.SYMLINK:
            try:
                target = os.readlink(os.path.join(root, rel))
            except OSError:
                target = "?"
            detail = f"symlink to {target} (left as it is)"
        records.append(FileRecord(
            root=root, rel=rel, folder=folder, category=category, custom=custom, status=status,
            size=st.st_size, mtime_ns=st.st_mtime_ns, mode=stat.S_IMODE(st.st_mode), dev=st.st_dev,
            ino=st.st_ino, nlink=st.st_nlink, link_target=target, detail=detail,
        ))
    return ScanResult(root=root, records=tuple(records), problems=tuple(problems))


def hash_records(
    result: ScanResult, cache: Optional[DigestCache], on_bytes: Optional[Callable[[int], None]] = None,
    only: Optional[Callable[[FileRecord], bool]] = None,
) -> ScanResult:
    """Fill in digests of files to migrate, from the cache where (dev, ino, size, mtime) match.

    `only` limits hashing to the records it accepts (the others keep digest None).
    """
    records = list(result.records)
    jobs, where = [], []
    cached = 0
    for i, r in enumerate(records):
        if not r.status.migrates or (only is not None and not only(r)):
            continue
        key = (r.dev, r.ino, r.size, r.mtime_ns)
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            records[i] = replace(r, digest=hit)
            cached += 1
            if on_bytes:
                on_bytes(r.size)
        else:
            jobs.append((r.path, key))
            where.append(i)
    problems = list(result.problems)
    hashed_bytes = 0
    for i, (digest, err) in zip(where, hash_many(jobs, on_bytes)):
        r = records[i]
        if err is not None:
            gone = isinstance(err, FileNotFoundError) or err.errno in (2, 116)
            status = Status.CHANGED if gone or err.__class__.__name__ == "ChangedError" else Status.UNREADABLE
            msg = f"{err.strerror or err}"
            records[i] = replace(r, status=status, detail=msg)
            problems.append(Problem(r.path, msg))
            continue
        records[i] = replace(r, digest=digest)
        hashed_bytes += r.size
        if cache is not None:
            cache.put((r.dev, r.ino, r.size, r.mtime_ns), digest)
    if cache is not None:
        cache.save()
    return replace(result, records=tuple(records), problems=tuple(problems), hashed_files=len(jobs),
                   hashed_bytes=hashed_bytes, cached_files=cached)


def scan_and_hash(roots: Sequence[str], cache: Optional[DigestCache],
                  on_bytes: Optional[Callable[[int], None]] = None) -> List[ScanResult]:
    return [hash_records(scan_tree(r), cache, on_bytes) for r in roots]
