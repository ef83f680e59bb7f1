"""Walk model trees (sorted, lstat, never following a link out) and classify every entry.

Yields facts only; hashing is a separate pass (`hash_records`) so the walk stays cheap.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from operator import attrgetter
from stat import S_IMODE, S_ISDIR, S_ISLNK, S_ISREG

from migrate.core import comfy
from migrate.disk.hashing import DigestCache, TimesMove, hash_many, note_read
from migrate.core.model import PROBE_PREFIX, STATE_DIR, FileRecord, Problem, ScanResult, Status

TEMP_MARK = ".cm-tmp-"     # our temporary files: .<name>.cm-tmp-<run id>


def temp_name(folder: str, name: str, tag: str) -> str:
    """`<folder>/.<name>.cm-tmp-<tag>`, the name part shortened (on a character boundary) so the whole
    fits the folder's filesystem: a 240-byte model name must still get a temporary file."""
    try:
        limit = os.statvfs(folder).f_namemax or 255
    except OSError:
        limit = 255
    tail = f"{TEMP_MARK}{tag}".encode()
    raw = name.encode("utf-8", "surrogateescape")
    if 1 + len(raw) + len(tail) > limit:
        raw = raw[:max(1, limit - 1 - len(tail))]
        name = raw.decode("utf-8", "ignore") or "x"
    return os.path.join(folder, f".{name}{TEMP_MARK}{tag}")
_by_name = attrgetter("name")


def _bad_name(name: str) -> bool:
    """Not valid UTF-8: os.fsdecode left surrogate escapes in it (which cannot be encoded)."""
    if name.isascii():
        return False
    try:
        name.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def classify(rel: str, st: os.stat_result) -> tuple[Status, str]:
    """The status of one entry from its name and lstat alone."""
    folder, _, base = rel.rpartition("/")
    return _classify(base, st.st_mode, st.st_size, bool(folder), bool(folder) and _bad_name(folder))


def _classify(base: str, mode: int, size: int, in_folder: bool, folder_bad: bool) -> tuple[Status, str]:
    """classify() for a walk that knows the folder: its name check (folder_bad) is done once per folder.

    A path is valid UTF-8 exactly when each of its components is, so checking the folder once and
    each name alone gives classify()'s answer.
    """
    if S_ISLNK(mode):
        return _SYMLINK
    if not S_ISREG(mode):
        return _SPECIAL
    if TEMP_MARK in base:
        return _TEMP
    if not in_folder:
        return _UNCATEGORISED
    if folder_bad or _bad_name(base):
        return _BAD_NAME
    lower = base.lower()
    if lower.startswith("put_") and "_here" in lower:
        return _PLACEHOLDER
    if lower.endswith(comfy.INCOMPLETE_SUFFIXES):
        return _INCOMPLETE
    if size == 0:
        return _EMPTY
    return _MIGRATE


_SYMLINK = (Status.SYMLINK, "symlink (left as it is)")
_SPECIAL = (Status.SPECIAL, "not a regular file (socket, FIFO or device)")
_TEMP = (Status.TEMP, "temporary file of an interrupted comfy-migrate run")
_UNCATEGORISED = (Status.UNCATEGORISED, "not in a category folder")
_BAD_NAME = (Status.BAD_NAME, "name is not valid UTF-8; rename it to migrate it")
_PLACEHOLDER = (Status.PLACEHOLDER, "ComfyUI placeholder")
_INCOMPLETE = (Status.INCOMPLETE, "incomplete download")
_EMPTY = (Status.EMPTY, "empty file")
_MIGRATE = (Status.MIGRATE, "")


def walk(root: str, on_error: Callable[[OSError], None] | None = None) -> Iterator[tuple[str, os.stat_result]]:
    """Yield (relative path, lstat) for every non-directory entry below root, sorted by name.

    Symlinked folders are yielded as entries and not entered; our state folder and `.git` are skipped.
    An unreadable folder or a vanished entry goes to on_error and the walk goes on (without
    on_error it is raised, which ends the walk).
    """
    for rel, entries in _walk_folders(root, on_error):
        prefix = rel + "/" if rel else ""
        for name, st in entries:
            yield prefix + name, st


def _walk_folders(root: str, on_error: Callable[[OSError], None] | None
                  ) -> Iterator[tuple[str, list[tuple[str, os.stat_result]]]]:
    """walk() a folder at a time: (folder relative to root, [(name, lstat)] of its non-folders).

    Per-folder work (the prefix, the category) is then done once per folder, not per file.
    """
    stack: list[tuple[str, str]] = [(root, "")]
    while stack:
        path, rel = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=_by_name)
        except OSError as exc:
            if on_error is None:
                raise
            on_error(exc)
            continue
        subdirs = []
        files = []
        for e in entries:
            name = e.name
            if name == ".git" or (not rel and name == STATE_DIR) or name.startswith(PROBE_PREFIX):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError as exc:
                if on_error is None:
                    raise
                on_error(exc)
                continue
            if S_ISDIR(st.st_mode):
                subdirs.append((e.path, f"{rel}/{name}" if rel else name))
            else:
                files.append((name, st))
        if files:
            yield rel, files
        stack.extend(reversed(subdirs))


def linked_categories(root: str) -> dict[str, str]:
    """{folder: category} for folders of `root` that ComfyUI reaches only through a category's
    symlink beside them (`models/checkpoints -> checkpoints_real`): their files are that category's
    models, not a custom-node folder's. A folder that is a category itself, or that two categories'
    links share, keeps its own name (ComfyUI lists its files under both)."""
    try:
        with os.scandir(root) as it:
            links = [e for e in it if e.is_symlink() and e.name in comfy.FOLDER_CATEGORY]
    except OSError:
        return {}
    real_root = os.path.realpath(root)
    seen: dict[str, set[str]] = {}
    for e in links:
        real = os.path.realpath(e.path)
        folder = os.path.basename(real)
        if (os.path.dirname(real) == real_root and folder not in comfy.FOLDER_CATEGORY
                and os.path.isdir(real) and not os.path.islink(os.path.join(root, folder))):
            seen.setdefault(folder, set()).add(comfy.FOLDER_CATEGORY[e.name])
    return {folder: cats.pop() for folder, cats in seen.items() if len(cats) == 1}


def scan_tree(root: str) -> ScanResult:
    """Stat facts of every entry under one root (no digests yet)."""
    records: list[FileRecord] = []
    problems: list[Problem] = []
    linked = linked_categories(root)

    def on_error(exc: OSError) -> None:
        gone = isinstance(exc, FileNotFoundError)
        problems.append(Problem(exc.filename or root, f"{'vanished during the scan' if gone else 'cannot read'}: "
                                f"{exc.strerror}"))

    for dir_rel, entries in _walk_folders(root, on_error):
        in_folder = bool(dir_rel)
        if in_folder:
            folder = sys.intern(dir_rel.split("/", 1)[0])     # one string per folder
            category, custom = (linked[folder], False) if folder in linked else comfy.category_of(folder)
            folder_bad = _bad_name(dir_rel)
            prefix = dir_rel + "/"
        else:
            folder, category, custom, folder_bad, prefix = "", None, False, False, ""
        for name, st in entries:
            rel = prefix + name
            mode = st.st_mode
            size = st.st_size
            status, detail = _classify(name, mode, size, in_folder, folder_bad)
            target = None
            if status is Status.SYMLINK:
                try:
                    target = os.readlink(os.path.join(root, rel))
                except OSError:
                    target = "?"
                detail = f"symlink to {target} (left as it is)"
                behind = os.path.basename(target.rstrip("/"))
                if not in_folder and behind in linked and linked[behind] == comfy.FOLDER_CATEGORY.get(name):
                    detail = (f"symlink to {target} (left as it is): ComfyUI's {linked[behind]} folder; the "
                              f"files of {behind}/ go to the store's {linked[behind]}/")
            # positional: ~25 % cheaper than keywords, and this runs once per file
            records.append(FileRecord(root, rel, folder, category, custom, status, size, st.st_mtime_ns,
                                      S_IMODE(mode), st.st_dev, st.st_ino, st.st_nlink, None, target, detail,
                                      st.st_ctime_ns))
    return ScanResult(root=root, records=tuple(records), problems=tuple(problems))


def _with(r: FileRecord, status: Status, digest: str | None, detail: str) -> FileRecord:
    """r._replace(status=, digest=, detail=) at a fraction of its cost (it runs once per file)."""
    return FileRecord(r.root, r.rel, r.folder, r.category, r.custom, status, r.size, r.mtime_ns, r.mode,
                      r.dev, r.ino, r.nlink, digest, r.link_target, detail, r.ctime_ns)


def hash_records(
    result: ScanResult, cache: DigestCache | None, on_bytes: Callable[[int], None] | None = None,
    only: Callable[[FileRecord], bool] | None = None, times_move: bool = False,
    light: Callable[[FileRecord], bool] | None = None,
) -> ScanResult:
    """Fill in digests of files to migrate, from the cache where the whole stamp matches (hashing.DigestCache).

    `only` limits hashing to the records it accepts (the others keep digest None).
    `times_move`: the filesystem's mtimes move while a file is read (hashing.TimesMove).
    `light`: records read for xxh3 alone, whose SHA-256 and BLAKE3 the run's copy computes in its
    own read (hashing.hash_many).
    """
    records = list(result.records)
    jobs, where, deferred = [], [], set()
    cached = 0
    for i, r in enumerate(records):
        if not r.status.migrates or (only is not None and not only(r)):
            continue
        key = r.stamp
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            records[i] = _with(r, r.status, hit, r.detail)
            cached += 1
            if on_bytes:
                on_bytes(r.size)
        else:
            if light is not None and light(r):
                deferred.add(len(jobs))
            jobs.append((r.path, TimesMove(key) if times_move else key))
            where.append(i)
    problems = list(result.problems)
    hashed_bytes = 0
    read_at = time.time_ns()     # before any read: a file written in the same tick counts as racy
    for i, (digest, err) in zip(where, hash_many(jobs, on_bytes, light=frozenset(deferred))):
        r = records[i]
        if err is not None:
            gone = isinstance(err, FileNotFoundError) or err.errno in (2, 116)
            status = Status.CHANGED if gone or err.__class__.__name__ == "ChangedError" else Status.UNREADABLE
            msg = f"{err.strerror or err}"
            records[i] = _with(r, status, None, msg)
            problems.append(Problem(r.path, msg))
            continue
        records[i] = _with(r, r.status, digest, r.detail)
        hashed_bytes += r.size
        note_read(r.stamp, digest, read_at)
        if cache is not None:
            cache.put(r.stamp, digest, read_at)
    if cache is not None:
        cache.save()
    return result._replace(records=tuple(records), problems=tuple(problems), hashed_files=len(jobs),
                           hashed_bytes=hashed_bytes, cached_files=cached)


def scan_and_hash(roots: Sequence[str], cache: DigestCache | None,
                  on_bytes: Callable[[int], None] | None = None) -> list[ScanResult]:
    return [hash_records(scan_tree(r), cache, on_bytes) for r in roots]
