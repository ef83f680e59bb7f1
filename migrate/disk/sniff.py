"""The audit's read side: read a few KiB at each end of a model file, cache the verdict, gather a tree.

Reading the head (for safetensors: the JSON header) and, for zip archives, the tail is all the
content checks need; a second full read of a file never happens. Verdicts are cached like digests,
by the file's whole stamp (ctime included), in a `verdicts2` table of the digest cache's SQLite file, so a warm
re-scan reads no file data. A small file read whole here also gets its digest cached, so hashing
it later reads nothing more.
"""
from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from migrate.core import audit, comfy
from migrate.disk.hashing import (DIGESTS_TABLE, OPEN_FLAGS, ChangedError, DigestCache, Stamp, from_sql, one_shot,
                             load_rows, matches, note_read, racy, save_rows, to_sql)
from migrate.core.model import Finding, ScanResult, Status

VERDICTS_TABLE = ("CREATE TABLE IF NOT EXISTS verdicts2 (dev INTEGER, ino INTEGER, size INTEGER,"
                  " mtime_ns INTEGER, ctime_ns INTEGER, read_ns INTEGER, checks INTEGER, verdict TEXT,"
                  " PRIMARY KEY (dev, ino))")


class VerdictCache:
    """Verdicts trusted as the digest cache trusts digests (whole stamp, ctime included, not racily
    clean: hashing.DigestCache), next to the digests in one SQLite file.

    Rows written by other versions of the checks are ignored. A missing table or a damaged file
    means an empty cache (the digest cache deals with a damaged file); a cache that cannot be
    written only costs time next run.
    """

    def __init__(self, path: Optional[str]) -> None:
        self.path = path = os.path.abspath(path) if path else path   # as DigestCache does
        self._known: Dict[Tuple[int, int], Tuple[int, int, int, int, str]] = {}
        self._new: Dict[Tuple[int, int], Tuple[int, int, int, int, str]] = {}
        if path and os.path.exists(path):
            import sqlite3
            try:
                rows = load_rows(path, "SELECT dev, ino, size, mtime_ns, ctime_ns, read_ns, verdict FROM verdicts2 "
                                 "WHERE checks = ?", (audit.CHECKS_VERSION,))
                self._known = {(from_sql(d), from_sql(i)): (s, m, c, t, v) for d, i, s, m, c, t, v in rows}
            except sqlite3.Error:
                self._known = {}

    def get(self, s: Stamp) -> Optional[audit.Verdict]:
        hit = self._new.get(s[:2]) or self._known.get(s[:2])
        if hit and hit[:3] == s[2:5] and not racy(s, hit[3]):
            try:
                return audit.Verdict.from_json(hit[4])
            except (ValueError, KeyError, TypeError):
                return None
        return None

    def put(self, s: Stamp, verdict: audit.Verdict, read_ns: int) -> None:
        self._new[s[:2]] = (s[2], s[3], s[4], read_ns, verdict.to_json())

    def save(self) -> None:
        if not self.path or not self._new:
            return
        # DIGESTS_TABLE too: so the digest cache finds its table in a new file
        if save_rows(self.path, (DIGESTS_TABLE, VERDICTS_TABLE),
                     "INSERT OR REPLACE INTO verdicts2 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     [(to_sql(d), to_sql(i), s, m, c, t, audit.CHECKS_VERSION, v)
                      for (d, i), (s, m, c, t, v) in self._new.items()]):
            self._known.update(self._new)
            self._new.clear()


def _pread_all(fd: int, n: int, offset: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = os.pread(fd, n - got, offset + got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_ends(path: str, name: str, key: Stamp) -> Tuple[bytes, bytes]:
    """The head and tail the content checks need, from a regular file that is still the scanned one."""
    fd = os.open(path, OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not matches(st, key):
            raise ChangedError(errno.ESTALE, "changed since it was scanned", path)
        size = key[2]
        head = _pread_all(fd, min(size, audit.HEAD), 0)
        want = audit.head_needed(name, size, head)
        if want > len(head):
            head += _pread_all(fd, want - len(head), len(head))
        t = audit.tail_needed(name, size, head)
        tail = b"" if not t else head[size - t:] if len(head) == size else _pread_all(fd, t, size - t)
        st = os.fstat(fd)
        if not matches(st, key):
            raise ChangedError(errno.ESTALE, "changed while it was read", path)
        return head, tail
    finally:
        os.close(fd)


def check_scan(scan: ScanResult, verdicts: Optional[VerdictCache],
               digests: Optional[DigestCache] = None) -> Tuple[Dict[str, audit.Verdict], int]:
    """Content verdicts of a scan's model files (from the cache where it matches); files read."""
    out: Dict[str, audit.Verdict] = {}
    read = 0
    for r in scan.records:
        if r.status not in (Status.MIGRATE, Status.UNCATEGORISED) or not audit.sniffed(r.rel):
            continue
        key = r.stamp
        v = verdicts.get(key) if verdicts is not None else None
        if v is None:
            read_at = time.time_ns()
            known = digests.get_all(key) if digests is not None else None     # before this read adds to it
            try:
                head, tail = read_ends(r.path, r.rel, key)
            except OSError:
                continue        # hashing meets the same error and reports it
            read += 1
            v = audit.check_content(r.rel, r.size, head, tail)
            if verdicts is not None:
                verdicts.put(key, v, read_at)
            if len(head) == r.size:      # the whole file was read: its digest is known too
                digest = one_shot(head)      # xxh3, and SHA-256/BLAKE3 when on (hashing.Hasher)
                note_read(key, digest, read_at)
                if digests is not None and (known is None or known[0] != digest or known[1] is None):
                    digests.put(key, digest, read_at)       # also an xxh3-only entry gaining SHA-256/BLAKE3
        out[r.path] = v
    if verdicts is not None:
        verdicts.save()
    return out, read


def check_sources(scans: Sequence[ScanResult], verdicts: Optional[VerdictCache], digests: Optional[DigestCache],
                  include_suspect: bool) -> Tuple[List[ScanResult], List[Finding]]:
    """For plan/run: every source's findings, and the scans with broken/suspect files held back."""
    out, findings = [], []
    for s in scans:
        found = audit.content_findings(s, check_scan(s, verdicts, digests)[0])
        findings.extend(found)
        out.append(s if include_suspect else audit.hold_back(s, found))
    return out, findings


# --- the audit command's gathering -------------------------------------------------------------------

@dataclass(frozen=True)
class AuditResult:
    roots: Tuple[str, ...]
    findings: Tuple[Finding, ...]
    summaries: Mapping[str, Mapping[str, object]]     # path -> format, tensors, dtypes, metadata
    files: int            # entries looked at
    read: int             # files whose ends were read (the rest came from the cache)
    verified: Tuple[str, ...] = ()      # models whose sidecar's SHA-256 matches their bytes


def _same_content(a: str, b: str, digests: Optional[DigestCache]) -> Optional[bool]:
    """Whether two files hold the same bytes: different sizes differ; else their digests decide
    (from the digest cache where the stamp matches, else read). None: one cannot be read."""
    from migrate.disk.hashing import hash_path, stamp
    got = []
    try:
        sts = [os.stat(a), os.stat(b)]
    except OSError:
        return None
    if sts[0].st_size != sts[1].st_size:
        return False
    for p, st in zip((a, b), sts):
        s = stamp(st)
        d = digests.get(s) if digests is not None else None
        if d is None:
            try:
                at = time.time_ns()
                d = hash_path(p, s)
            except OSError:
                return None
            if digests is not None:
                digests.put(s, d, at)
        got.append(d)
    return got[0] == got[1]


def sidecar_witnesses(scan: ScanResult, digests: Optional[DigestCache]) -> Tuple[List[Finding], List[str]]:
    """Models whose sidecar (`<name>.sha256`, `.civitai.info`, `.metadata.json`) names a SHA-256,
    compared with their bytes: mismatches, and the paths verified upstream. The model's SHA-256 comes
    from the digest cache where it vouches for the file, else from a read of its bytes (computing all
    three hashes, cached); sidecars are read only when present."""
    from migrate.disk.hashing import Hasher, extras, hash_path, stamp
    findings: List[Finding] = []
    verified: List[str] = []
    for r in scan.records:
        if r.status is not Status.MIGRATE:
            continue
        folder = os.path.dirname(r.path)
        witnesses = []
        for name in audit.sidecar_names(os.path.basename(r.path)):
            side = os.path.join(folder, name)
            try:
                fd = os.open(side, OPEN_FLAGS)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                data = os.read(fd, audit.SIDECAR_MAX) if stat.S_ISREG(st.st_mode) else b""
            except OSError:
                data = b""
            finally:
                os.close(fd)
            named = audit.sidecar_sha256(name, os.path.basename(r.path), data)
            if named:
                witnesses.append((side, named))
        if not witnesses:
            continue
        s = r.stamp
        got = digests.get_all(s) if digests is not None else None
        sha = got[1] if got is not None else None
        if sha is None:
            try:
                at = time.time_ns()
                h = Hasher(True)
                fd = os.open(r.path, OPEN_FLAGS)
                try:
                    st = os.fstat(fd)
                    if stamp(st) != s:
                        continue
                    while True:
                        chunk = os.read(fd, 1 << 20)
                        if not chunk:
                            break
                        h.update(chunk)
                    if stamp(os.fstat(fd)) != s:
                        continue
                finally:
                    os.close(fd)
                digest = h.hexdigest()
                note_read(s, digest, at)
                if digests is not None:
                    digests.put(s, digest, at)
                sha = (extras(digest) or (None,))[0]
            except OSError:
                continue
        if sha is None:
            continue
        f = audit.sidecar_finding(r.path, witnesses, sha)
        if f is not None:
            findings.append(f)
        else:
            verified.append(r.path)
    return findings, verified


def same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def audit_trees(roots: Sequence[str], order: Mapping[str, List[str]], verdicts: Optional[VerdictCache],
                digests: Optional[DigestCache]) -> AuditResult:
    """Scan each root and run every check; changes nothing but the caches."""
    from migrate.disk.scan import scan_tree
    from migrate.core.names import first_holder
    findings: List[Finding] = []
    summaries: Dict[str, Mapping[str, object]] = {}
    files = read = 0
    verified: List[str] = []
    for root in roots:
        scan = scan_tree(root)
        wrong, right = sidecar_witnesses(scan, digests)
        findings.extend(wrong)
        verified.extend(right)
        found, n = check_scan(scan, verdicts, digests)
        read += n
        files += len(scan.records)
        summaries.update({p: v.summary for p, v in found.items()})
        findings.extend(audit.content_findings(scan, found))
        findings.extend(Finding(p.path, "unreadable", "suspect", p.message, audit.FIXES["unreadable"])
                        for p in scan.problems)
        # A tree that ComfyUI does not search yet (a store before its first run) is judged by its
        # own layout, as if it were ComfyUI's models folder.
        listed = {os.path.normpath(f) for fs in order.values() for f in fs}
        own = order if any(os.path.normpath(os.path.join(root, r.folder)) in listed for r in scan.records
                           if r.folder) else comfy.search_folders([], root)
        dangling = [r.path for r in scan.records if r.status is Status.SYMLINK and not os.path.exists(r.path)]
        findings.extend(audit.tree_findings(scan, own, dangling,
                                            lambda cat, name, own=own: first_holder(own.get(cat, []), name, os.path.isfile), same_file,
                                            lambda a, b: _same_content(a, b, digests)))
    if digests is not None:
        digests.save()
    findings.sort(key=lambda f: (f.path, f.kind))
    return AuditResult(tuple(roots), tuple(findings), summaries, files, read, tuple(sorted(verified)))
