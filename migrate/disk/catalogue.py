"""The store's catalogue: what the shared target holds (path, size, mtime, inode, digest, run).

Many pods share one network volume; each pod's digest cache is on its own disk, so without this
the next pod would re-read every stored file whose size meets one of its own. The catalogue lives
next to the logs (`<target>/.comfy-migrate/catalogue.jsonl`) so every pod sees it.

Trust model (the digest cache's): an entry is used only while the file's (size, mtime_ns, inode,
ctime_ns) are still those recorded (ctime: an in-place rewrite with the mtime put back changes it,
and so does any other write); anything else is hashed again. It is a cache of facts that can be
recomputed, never a reason to delete: rollback and purge re-check the disk. `verify` re-hashes.

Completeness: it may lack entries only while a run is interrupted. Each run and rollback rewrites
it from the store as walked now: a file known to this session or to the old catalogue costs one
lstat; one they do not know was put there by a run whose process died before it rewrote the
catalogue (which it does before closing its log: SIGKILLed, then continued, rolled back, or
followed by another pod's run), and that run's log gives its digest while the file still has
the logged identity. A name a run placed that matches no logged identity (edited or replaced
since) is hashed. A file put in the store by hand is not read for this: the first plan whose
sizes meet it hashes it (a store filled by hand may hold many gigabytes no plan ever needs).

Format: JSON lines, a header `{"catalogue": 1, "entries": N}` then one sorted entry per line. It is
rewritten whole (temp + fsync + rename: no SQLite, whose locking network filesystems break) and
only while the target's lock is held; readers without the lock see the old or the new file. A
missing, damaged or foreign-version file reads as empty, with a warning.
"""
from __future__ import annotations

import json
import os
import posixpath
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

from migrate.disk import fsops
from migrate.core.fleet import store_rel
from migrate.core.model import STATE_DIR, Action, ActionKind, Method, ScanResult, Status
from migrate.core.steps import PLACES, STORES_SOURCE, Op

CATALOGUE_VERSION = 1
NAME = "catalogue.jsonl"

Ident = Tuple[int, int, int]            # (inode, size, mtime_ns): the file as last seen


class Entry(NamedTuple):
    """One stored file (a tuple: 100,000 of them load in a blink)."""

    rel: str
    size: int
    mtime_ns: int
    ino: int
    digest: str
    run: Optional[str] = None           # the run that placed it (None: found in the store)
    ctime_ns: Optional[int] = None      # as walked when the entry was written (None: never trusted)
    sha256: Optional[str] = None        # of the content `digest` names, when a read computed it (hashing.Hasher)
    blake3: Optional[str] = None        # likewise; both used only as far as `digest` is (`lookup`)

    @property
    def ident(self) -> Ident:
        return (self.ino, self.size, self.mtime_ns)


Catalogue = Dict[str, Entry]


def path_of(target: str) -> str:
    return os.path.join(target, STATE_DIR, NAME)


# --- pure -----------------------------------------------------------------------------------------

def parse(data: Optional[bytes]) -> Tuple[Catalogue, str]:
    """Entries of a catalogue file, and a warning ('' if none). Damaged -> empty: it is only a cache."""
    if data is None:
        return {}, ""
    try:
        lines = data.decode("utf-8").splitlines()
        head = json.loads(lines[0]) if lines else {}
        if head.get("catalogue") != CATALOGUE_VERSION:
            return {}, f"the store's catalogue has unknown version {head.get('catalogue')!r}; ignored (rebuilt)"
        out: Catalogue = {}
        for e in json.loads("[" + ",".join(lines[1:]) + "]"):     # one parse: fast for big stores
            rel, size, mtime_ns, ino, digest = e["rel"], e["size"], e["mtime_ns"], e["ino"], e["digest"]
            if not (isinstance(rel, str) and isinstance(digest, str) and type(size) is int
                    and type(mtime_ns) is int and type(ino) is int):
                raise ValueError(f"a malformed entry for {rel!r}")
            ctime_ns = e.get("ctime_ns")
            sha, b3 = e.get("sha256"), e.get("blake3")
            if not (isinstance(sha, str) and len(sha) == 64 and isinstance(b3, str) and len(b3) == 64):
                sha = b3 = None
            out[rel] = Entry(rel, size, mtime_ns, ino, digest, e.get("run"),
                             ctime_ns if type(ctime_ns) is int else None, sha, b3)
        if len(out) != head.get("entries"):
            raise ValueError("entry count differs from the header")
        return out, ""
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        return {}, f"the store's catalogue is damaged ({exc}); ignored (rebuilt)"


def render(cat: Catalogue) -> bytes:
    lines = [json.dumps({"catalogue": CATALOGUE_VERSION, "entries": len(cat)}, sort_keys=True)]
    for rel in sorted(cat):
        e = cat[rel]
        row = {"rel": e.rel, "size": e.size, "mtime_ns": e.mtime_ns, "ino": e.ino,
               "ctime_ns": e.ctime_ns, "digest": e.digest, "run": e.run}
        if e.sha256 and e.blake3:
            row.update(sha256=e.sha256, blake3=e.blake3)
        lines.append(json.dumps(row, sort_keys=True, ensure_ascii=True))
    return ("\n".join(lines) + "\n").encode("ascii")


def lookup(cat: Catalogue, rel: str, ident: Ident, ctime_ns: int) -> Optional[str]:
    """The recorded digest of `rel` if the file is still the one recorded (ctime too), else None.
    Its SHA-256 and BLAKE3, when recorded, become known with it (hashing.extras)."""
    e = cat.get(rel)
    if e is not None and e.ident == ident and e.ctime_ns == ctime_ns:
        if e.sha256 and e.blake3:
            from migrate.disk.hashing import remember_extras
            remember_extras(e.digest, e.sha256, e.blake3)
        return e.digest
    return None


def with_hashes(cat: Catalogue, old: Catalogue) -> Catalogue:
    """Each entry with the SHA-256 and BLAKE3 of its content: from a read in this process, else from
    an old entry naming the same xxh3 digest (they describe the content, not the file)."""
    from migrate.disk.hashing import extras
    known = {e.digest: (e.sha256, e.blake3) for e in old.values() if e.sha256 and e.blake3}
    out: Catalogue = {}
    for rel, e in cat.items():
        more = extras(e.digest) or known.get(e.digest)
        out[rel] = e._replace(sha256=more[0], blake3=more[1]) if more else e
    return out


Known = Dict[Tuple[str, int, int], Tuple[str, Optional[str]]]     # (rel, size, mtime_ns) -> (digest, run)
Logged = Dict[Tuple[str, Ident], Tuple[str, str]]                  # (rel, ident) -> (digest, run) from run logs


Walked = Tuple[str, Ident, int]      # (rel, identity, ctime_ns) of a stored file as walked now


def reconcile(walked: Iterable[Walked], known_by_rel: Known, known_by_ident: Dict[Ident, str],
              old: Catalogue, logged: Optional[Logged] = None) -> Catalogue:
    """The catalogue of the store as walked now (pure).

    walked: (rel, ident, ctime_ns) of every stored model file. A file's digest comes from facts
    gathered in this locked session (known_by_rel: what was scanned or placed at that name, size
    and mtime; known_by_ident: the same inode, size and mtime as a known file, i.e. a hardlink of
    it), else from the old catalogue while its identity and ctime match, or a run's log (`logged`,
    see `placements`) while its identity matches. Files with no known digest are left out.
    """
    logged = logged or {}
    walked = list(walked)
    by_ident = dict(known_by_ident)
    now = {rel: (ident, ctime_ns) for rel, ident, ctime_ns in walked}
    # An old entry vouches for its inode (and so for hardlinks of it) only while unchanged since.
    by_ident.update({e.ident: e.digest for e in old.values() if now.get(e.rel) == (e.ident, e.ctime_ns)})
    cat: Catalogue = {}
    for _ in range(2):      # a second pass reaches hardlinks of files first known in the first
        for rel, ident, ctime_ns in walked:
            if rel in cat:
                continue
            prev = old.get(rel)
            hit = known_by_rel.get((rel, ident[1], ident[2]))
            if hit is None and prev is not None and prev.ident == ident and prev.ctime_ns == ctime_ns:
                hit = (prev.digest, prev.run)
            if hit is None:
                hit = logged.get((rel, ident))
            if hit is None and ident in by_ident:
                hit = (by_ident[ident], None)
            if hit is None:
                continue
            digest, run = hit
            if prev is not None and prev.digest == digest and prev.run:
                run = prev.run
            cat[rel] = Entry(rel, ident[1], ident[2], ident[0], digest, run, ctime_ns)
            by_ident.setdefault(ident, digest)
    return cat


def known_from(target: str, target_scan: Optional[ScanResult], actions: Iterable[Action],
               run_id: Optional[str]) -> Tuple[Known, Dict[Ident, str]]:
    """What a locked session knows of the store: stored files it hashed, and files its run placed."""
    by_rel: Known = {}
    by_ident: Dict[Ident, str] = {}
    for r in (target_scan.records if target_scan is not None else ()):
        if r.digest and r.status is Status.MIGRATE:
            by_rel[(r.rel, r.size, r.mtime_ns)] = (r.digest, None)
            by_ident[(r.ino, r.size, r.mtime_ns)] = r.digest
    for a in actions:
        if a.dst is None or a.digest is None or a.method not in (Method.HARDLINK, Method.RENAME, Method.COPY) \
                or a.kind is ActionKind.SAME_CONTENT:
            continue
        by_rel[(posixpath.relpath(a.dst, target), a.size, a.mtime_ns)] = (a.digest, run_id)
        if a.method is not Method.COPY:
            by_ident[(a.ino, a.size, a.mtime_ns)] = a.digest
    return by_rel, by_ident


def placements(runs: Iterable[Sequence[dict]]) -> Tuple[Logged, Dict[Ident, str], Set[str]]:
    """What run logs say of the files they put in the store (pure): (rel, identity) -> (digest, run),
    identity -> digest (for hardlinks of them, e.g. dedupe links), and every name they placed.

    A link or rename keeps the source's inode, size and mtime, whose scanned digest the log holds;
    a verified copy keeps size and mtime and its inode is logged once staged. Whether the step
    was done or only begun does not matter: a step that never happened matches no file (its name
    holds another file, or none). Paths are taken relative to each run's logged target.
    """
    logged: Logged = {}
    by_ident: Dict[Ident, str] = {}
    names: Set[str] = set()
    for records in runs:
        if not records:
            continue
        head = records[0]
        target, run = head.get("target") or "", head.get("run")
        copied = {r.get("step"): r.get("tmp_ino") for r in records if r.get("type") == "staged"}
        copied.update({r.get("step"): r.get("dst_ino") for r in records
                       if r.get("type") == "done" and r.get("dst_ino") is not None})
        # A copy's mtime as the store keeps it (MooseFS: to the second), observed after its publish.
        kept = {r.get("step"): r.get("dst_mtime_ns") for r in records
                if r.get("type") == "done" and r.get("dst_mtime_ns") is not None}
        for r in records:
            op = r.get("op")
            if r.get("type") != "begin" or op not in PLACES:
                continue
            rel = store_rel(r.get("dst"), target)
            if rel is None:
                continue
            names.add(rel)
            # A dedupe's name is the stored copy's inode, logged with its source's mtime: no identity.
            ino = Op(op).placed_ino(dict(r, dst_ino=copied.get(r.get("step")))) if op in STORES_SOURCE else None
            size, mtime_ns, digest = r.get("size"), r.get("mtime_ns"), r.get("digest")
            if op == Op.COPY and r.get("step") in kept:
                mtime_ns = kept[r.get("step")]
            if type(ino) is int and type(size) is int and type(mtime_ns) is int and isinstance(digest, str) \
                    and isinstance(run, str):
                logged[(rel, (ino, size, mtime_ns))] = (digest, run)
                by_ident[(ino, size, mtime_ns)] = digest
    return logged, by_ident, names


# --- shell ----------------------------------------------------------------------------------------

def load(target: str) -> Tuple[Catalogue, str]:
    try:
        data = fsops.read_file(path_of(target), 1 << 30)
    except OSError as exc:
        return {}, f"cannot read the store's catalogue ({exc.strerror}); ignored"
    return parse(data)


def save(target: str, cat: Catalogue) -> None:
    """Rewrite the catalogue atomically. Call only while holding the target's lock."""
    fsops.make_folders(os.path.join(target, STATE_DIR))
    fsops.atomic_write(path_of(target), render(cat))


def walk_store(target: str) -> List[Walked]:
    """(rel, (inode, size, mtime_ns), ctime_ns) of every file in the store a plan would consider (lstat only)."""
    from migrate.disk.scan import classify, walk
    out = []
    for rel, st in walk(target, lambda exc: None):
        if classify(rel, st)[0].migrates:
            out.append((rel, (st.st_ino, st.st_size, st.st_mtime_ns), st.st_ctime_ns))
    return out


def run_logs(target: str) -> List[List[dict]]:
    """The records of every readable run log in the target (rollback logs and damaged logs left out)."""
    from migrate.core.errors import BadLog
    from migrate.disk.journal import read_log, run_logs as log_paths
    out = []
    for _, path in log_paths(target):
        try:
            out.append(read_log(path)[0])
        except BadLog:
            continue
    return out


def hash_stored(target: str, files: Iterable[Walked]) -> Known:
    """Digests of stored files, read now, each only while it is still the file walked."""
    from migrate.disk.hashing import hash_path, stat_key
    out: Known = {}
    for rel, ident, _ in files:
        path = os.path.join(target, rel)
        try:
            st = os.lstat(path)
            if (st.st_ino, st.st_size, st.st_mtime_ns) == ident:
                out[(rel, ident[1], ident[2])] = (hash_path(path, stat_key(st)), None)
        except OSError:
            continue
    return out


def refresh(target: str, known_by_rel: Known, known_by_ident: Dict[Ident, str]) -> Tuple[Catalogue, str]:
    """Re-walk the store and rewrite its catalogue (under the target's lock). Returns it and a warning.

    Files neither this session nor the old catalogue knows are looked up in the run logs (read
    only then); names a run placed that no log explains are hashed (see the module's docstring).
    """
    old, warning = load(target)
    walked = walk_store(target)
    cat = reconcile(walked, known_by_rel, known_by_ident, old)
    if len(cat) < len(walked):
        logged, by_ident, names = placements(run_logs(target))
        by_ident.update(known_by_ident)
        cat = reconcile(walked, known_by_rel, by_ident, old, logged)
        read = hash_stored(target, [w for w in walked if w[0] not in cat and w[0] in names])
        if read:
            cat = reconcile(walked, {**known_by_rel, **read}, by_ident, old, logged)
    cat = with_hashes(cat, old)
    save(target, cat)
    return cat, warning


# --- the catalogue other tools read (`comfy-migrate catalogue`) -------------------------------------

HEADER_HASHES = ("modelspec.hash_sha256", "sshs_model_hash")     # in a safetensors header's __metadata__
MAX_HEADER = 100 << 20                                           # safetensors' own limit


def autov2(sha256: Optional[str]) -> Optional[str]:
    """A1111/Forge's short hash: the first 10 hex digits of SHA-256, upper case as they show it."""
    return sha256[:10].upper() if sha256 else None


def header_hashes(head: Optional[dict]) -> Dict[str, str]:
    """`modelspec.hash_sha256` / `sshs_model_hash` from a parsed safetensors header, when present."""
    meta = head.get("__metadata__") if isinstance(head, dict) else None
    if not isinstance(meta, dict):
        return {}
    return {k: meta[k] for k in HEADER_HASHES if isinstance(meta.get(k), str) and meta[k]}


def export_rows(walked: Sequence[Walked], cat: Catalogue, headers: Dict[str, Dict[str, str]],
                cached: Optional[Dict[str, Tuple[str, Optional[str], Optional[str]]]] = None) -> List[dict]:
    """One row per stored model file (pure): its category, every name that loads the same bytes
    from the store (`category/name`: hardlinks and same-content copies), size, and its hashes where
    the catalogue vouches for them (the file still has the recorded inode, size, mtime and ctime),
    else where this user's digest cache does (`cached`: rel -> (xxh3, sha256, blake3), e.g. from a
    `verify` that read a file stored before SHA-256 was computed)."""
    from migrate.core.comfy import category_of
    cached = cached or {}
    digests: Dict[str, Optional[str]] = {}
    for rel, ident, ctime_ns in walked:
        digests[rel] = lookup(cat, rel, ident, ctime_ns) or (cached[rel][0] if rel in cached else None)
    by_digest: Dict[str, List[str]] = {}
    for rel, d in digests.items():
        if d:
            by_digest.setdefault(d, []).append(rel)

    def named(rel: str) -> Tuple[str, str]:
        folder, _, name = rel.partition("/")
        return category_of(folder)[0], name

    rows = []
    for rel, ident, _ in sorted(walked):
        d = digests[rel]
        e = cat.get(rel) if d else None
        sha = e.sha256 if e is not None and e.digest == d else None
        b3 = e.blake3 if e is not None and e.digest == d else None
        if sha is None and rel in cached and cached[rel][0] == d and cached[rel][1]:
            sha, b3 = cached[rel][1], cached[rel][2]
        category, name = named(rel)
        names = sorted({"/".join(named(r)) for r in by_digest.get(d, [rel])} if d else {f"{category}/{name}"})
        row = {"path": rel, "category": category, "name": name, "names": names, "size": ident[1],
               "xxh3": d, "sha256": sha, "blake3": f"blake3:{b3}" if b3 else None, "autov2": autov2(sha)}
        row.update({k: headers.get(rel, {}).get(k) for k in HEADER_HASHES})
        rows.append(row)
    return rows


def read_header(path: str) -> Optional[dict]:
    """A safetensors file's parsed JSON header (None when it is not one); reads only the header."""
    import struct
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        first = os.pread(fd, 8, 0)
        if len(first) < 8:
            return None
        n = struct.unpack("<Q", first)[0]
        if not 2 <= n <= MAX_HEADER:
            return None
        raw = os.pread(fd, n, 8)
        doc = json.loads(raw.decode("utf-8")) if len(raw) == n else None
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)


def export(target: str, cache=None) -> Tuple[List[dict], str]:
    """`comfy-migrate catalogue`'s rows for the store at target, and the catalogue's warning. Reads
    no model's bytes but safetensors headers: a file neither the catalogue nor the user's digest
    cache (`cache`, a hashing.DigestCache, consulted by stat data) vouches for has no hashes in its
    row (`lacking` counts them)."""
    cat, warning = load(target)
    walked = walk_store(target)
    headers = {rel: header_hashes(read_header(os.path.join(target, rel)))
               for rel, _, _ in walked if rel.lower().endswith(".safetensors")}
    cached: Dict[str, Tuple[str, Optional[str], Optional[str]]] = {}
    if cache is not None:
        from migrate.disk.hashing import stamp
        for rel, ident, ctime_ns in walked:
            e = cat.get(rel)
            if e is not None and e.sha256 and lookup(cat, rel, ident, ctime_ns):
                continue
            try:
                got = cache.get_all(stamp(os.lstat(os.path.join(target, rel))))
            except OSError:
                continue
            if got is not None:
                cached[rel] = got
    return export_rows(walked, cat, headers, cached), warning


def lacking(rows: Sequence[dict]) -> Tuple[int, int]:
    """(rows without any digest, rows with xxh3 but no SHA-256/BLAKE3)."""
    return (sum(1 for r in rows if not r["xxh3"]), sum(1 for r in rows if r["xxh3"] and not r["sha256"]))
