"""Undo a run from its audit log.

`plan_rollback` is pure: log records -> the inverse steps, newest first (begun-but-unfinished steps
included: each undo checks the world, so it is a no-op where the step never happened).
`execute_rollback` applies them, journalled in `<run>.rollback.jsonl`; every undo first checks the
disk is as the log left it (same inode, else same digest) and skips, reporting, what changed since.
Applying it again after an interruption is safe: every undo is idempotent.
"""
from __future__ import annotations

import errno
import os
import posixpath
import socket
import stat
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from migrate import __version__
from migrate.disk import fsops, identity
from migrate.core.fleet import store_rel
from migrate.disk.hashing import hash_bytes, hash_path
from migrate.disk.journal import Journal, group_steps, read_begun, rollback_log_of
from migrate.core.model import Problem
from migrate.disk.runlog import PATH_FIELDS
from migrate.disk.scan import TEMP_MARK, temp_name
from migrate.core.steps import PLACES, PLACES_FILE, REMOVES_SOURCE, Op


@dataclass(frozen=True)
class Undo:
    op: str            # the forward op being undone
    step: int
    rec: dict          # the begin record, merged with its done/staged records
    finished: bool     # the forward step was confirmed done

    def describe(self) -> str:
        op = Op.of({"op": self.op})
        return op.describe_undo(self.rec) if op is not None else self.op


def store_facts(target: str, records: Sequence[dict]) -> Tuple[dict, Dict[str, dict]]:
    """What the store's filesystem does now, no stronger than what it remembers (fsops.seen_facts),
    and that record for each of the run's roots on the store's filesystem (plan_rollback's `seen`):
    the store is probed again here, as every plan probes it, since one probe can be lucky."""
    fresh = fsops.fs_doc(fsops.probe_fs(target))
    merged = identity.weakest(fsops.seen_facts(target), fresh)
    head = records[0]
    try:
        dev = os.stat(target).st_dev
    except OSError:
        return merged, {}
    out: Dict[str, dict] = {}
    for root in [head.get("target")] + list(head.get("sources") or []):
        try:
            if isinstance(root, str) and os.stat(root).st_dev == dev:
                out[root] = merged
        except OSError:
            continue
    return merged, out


def plan_rollback(records: Sequence[dict], seen: Optional[Dict[str, dict]] = None) -> List[Undo]:
    """`seen`: root -> filesystem facts weaker than the run recorded (see identity.precisions)."""
    steps = group_steps(list(records))
    prec = identity.precisions(list(records), seen) if records else (lambda p: identity.EXACT)
    undos = []
    for b in reversed(steps.begins):
        rec = dict(b)
        for side, f in (("_p_src", "src"), ("_p_dst", "dst"), ("_p_src", "q")):
            if isinstance(b.get(f), str) and side not in rec:
                rec[side] = prec(b[f])
        for extra in steps.extra.get(b["step"], []):
            if extra["type"] == "staged":
                rec["tmp_ino"] = extra["tmp_ino"]
        done = steps.done.get(b["step"])
        failed = any(e["type"] == "fail" for e in steps.extra.get(b["step"], []))
        op = Op.of(b)
        if failed and not done and not (op is not None and op.may_act_failed):
            continue    # a failed step changed nothing (each is one atomic call)
        if done:
            rec.update({k: v for k, v in done.items() if k not in ("type", "seq", "prev", "sum")})
        undos.append(Undo(b["op"], b["step"], rec, done is not None))
    # The YAML goes back last, and only once every source it serves is back (see `stranded`): until
    # then its section keeps each name loading from the store.
    return [u for u in undos if u.op != Op.YAML] + [u for u in undos if u.op == Op.YAML]


def _safe(root_of: Callable[[str], Optional[str]], path: str, links: Optional[Dict[str, str]] = None) -> None:
    """No folder between the recorded root and `path` may be a symlink (a planted escape), but for
    the symlinks the run journalled as there before its first step, still with the same text
    (`links`: path -> link text; preflight.py's rule for symlinked store folders)."""
    root = root_of(path)
    if root is None:
        raise OSError(errno.EPERM, "outside the run's folders", path)
    cur = root.rstrip("/")
    for part in path[len(cur) + 1:].split("/")[:-1]:
        cur = cur + "/" + part
        try:
            if os.path.islink(cur) and (links or {}).get(cur) != os.readlink(cur):
                raise OSError(errno.ELOOP, "a folder on the way is now a symlink", cur)
        except (FileNotFoundError, NotADirectoryError):
            return      # nothing of the run's is below a missing folder, or below a file


def run_links(records: Sequence[dict]) -> Dict[str, str]:
    """The symlinked folders the run journalled before its first step (and a continued run's first)."""
    out: Dict[str, str] = {}
    for rec in records:
        if rec.get("type") == "links":
            for d, to in (rec.get("dirs") or {}).items():
                out.setdefault(d, to)
    return out


def _as_logged(path: str, r: dict, side: str = "src") -> bool:
    """Size and mtime still those the run observed (an in-place rewrite keeps the inode, not these), at
    the precision of the path's filesystem: on the store's side ('dst') the destination's own stat
    logged after its publish (a copy on MooseFS keeps whole seconds of the source's nanoseconds)."""
    st = os.lstat(path)
    want = r.get("dst_mtime_ns", r["mtime_ns"]) if side == "dst" else r["mtime_ns"]
    return not identity.differs(st, r["size"], want, None, r.get("_p_" + side, identity.EXACT))


def _is_logged_file(path: str, r: dict, side: str, dev_ino: Optional[Tuple[int, int]]) -> bool:
    """`path` is the file the run logged: its inode where the filesystem keeps inodes stable, else
    size + mtime + digest (identity.same_file), and in both cases size and mtime at its precision."""
    p = r.get("_p_" + side, identity.EXACT)
    if p.stable_inode:
        return dev_ino is not None and _ino(path) == dev_ino and _as_logged(path, r, side)
    want = r.get("dst_mtime_ns", r["mtime_ns"]) if side == "dst" else r["mtime_ns"]
    return identity.same_file(path, r["size"], want, None, r.get("digest"), p)


def _src_holds(r: dict) -> bool:
    """The old name holds the logged content again: the logged file itself, or a regular file with
    the logged digest (re-hashed: only reached when another file took the name)."""
    try:
        st = os.lstat(r["src"])
    except (FileNotFoundError, NotADirectoryError):
        return False
    if _is_logged_file(r["src"], r, "src", (r["dev"], r["ino"])):
        return True
    return stat.S_ISREG(st.st_mode) and st.st_size == r["size"] and hash_path(r["src"]) == r["digest"]


def _ino(path: str) -> Optional[Tuple[int, int]]:
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):     # a file where a folder was: not there either
        return None
    return st.st_dev, st.st_ino


@dataclass
class RollbackReport:
    run_id: str
    log_path: str
    undone: int = 0
    skipped: List[Problem] = field(default_factory=list)
    resumed: bool = False
    kept: List[Problem] = field(default_factory=list)    # stored files other runs rely on
    stranded: List[Problem] = field(default_factory=list)    # sources not back, only in the store: the
                                                             # YAML's section stays so their names load


def execute_rollback(log_path: str, records: List[dict], undos: List[Undo],
                     on_bytes: Optional[Callable[[int], None]] = None,
                     relied: Optional[Dict[str, List[str]]] = None, shared: bool = False,
                     handed: Sequence[dict] = (), before_close: Optional[Callable[[], None]] = None,
                     left_folders: Sequence[str] = ()) -> RollbackReport:
    """Apply `undos` (journalled). `relied`: store-relative path -> other runs relying on it (fleet.reliance);
    such a file stays in the store (its source name is recreated) instead of being removed.
    `shared`: other runs use the store, so a store folder still holding files is expected.
    `handed`: keep records of earlier rollbacks that kept a file for this run and for no run still
    relying on it: once this run's sources are back, the file leaves the store as if its own.
    `before_close`: called before the closing record (execute_plan's)."""
    relied = relied or {}
    head = records[0]
    roots = [head["target"]] + list(head["sources"])

    def root_of(p: str) -> Optional[str]:
        return next((r for r in roots if p.startswith(r.rstrip("/") + "/")), None)

    links = run_links(records)
    rb_path = rollback_log_of(log_path)
    again = "`comfy-migrate rollback` again finishes the rollback"
    state = os.path.dirname(os.path.dirname(log_path))      # <target>/.comfy-migrate

    def room() -> bool:     # a full store: the reserve each run keeps there makes room for this log
        return fsops.release_reserve(state) > 0
    done_before: set = set()
    if read_begun(rb_path) is not None:
        j, rb_records, _ = Journal.reopen(rb_path, again, room)
        # A step skipped before is tried again (every undo is idempotent): a rollback closed as
        # incomplete (a source not back, the YAML kept) is finished by running it again.
        skipped_before = {r["undo"] for r in rb_records if r.get("type") == "skip"}
        done_before = {r["undo"] for r in rb_records if r.get("type") == "done"} - skipped_before
        j.append({"type": "resume", "pid": os.getpid(), "host": socket.gethostname()})
        report = RollbackReport(head["run"], rb_path, resumed=True)
    else:
        # None, or one holding no complete record: an earlier rollback killed (or refused by a full
        # disk) before its first record reached the disk, so before its first undo. It did nothing;
        # we hold the lock, so no rollback is writing it now: it goes, and this one starts afresh.
        dropped = _drop_unbegun(rb_path)
        j = Journal.create(rb_path, {"run": head["run"], "rollback_of": os.path.basename(log_path),
                                     "tool": __version__, "host": socket.gethostname(),
                                     "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                     "log_tail": records[-1]["sum"],
                                     **({"unbegun_log_dropped": dropped} if dropped is not None else {})},
                           again, room)
        report = RollbackReport(head["run"], rb_path)

    def drop_handed() -> None:
        for k in handed:
            k = dict(k, path=posixpath.join(head["target"], k["rel"]))    # where this pod mounts the store
            step = f"drop:{k['rel']}"
            if step in done_before:
                continue
            j.append({"type": "begin", "undo": step, "op": Op.DROP_KEPT.value, "path": k["path"]})
            try:
                _safe(root_of, k["path"], links)
                note = _drop_kept(k, records)
            except OSError as exc:
                note = fsops.describe(exc)
            if note:
                report.kept.append(Problem(k["path"], f"left in the store: {note}"))
                j.append({"type": "skip", "undo": step, "why": note})
            j.append({"type": "done", "undo": step})

    # Source names that were one inode before the run come back as one inode: logged (dev, ino) ->
    # the names of it restored by this rollback (see _restore_twin).
    twins: Dict[Tuple[int, int], List[str]] = {}
    in_store = head["target"].rstrip("/") + "/"
    # Kept files leave once this run's sources are back (every source removal undone: a continued
    # run has some before and some after its resume), before the store folders made since are
    # removed: those may hold nothing else.
    last_removal = max((i for i, u in enumerate(undos) if u.op in REMOVES_SOURCE), default=-1)
    first_dir = next((i for i, u in enumerate(undos) if i > last_removal and u.op == Op.MKDIR
                      and u.rec["path"].startswith(in_store)), len(undos))
    try:
        for i, u in enumerate(undos):
            if i == first_dir:
                drop_handed()
            if u.step in done_before:
                continue
            if u.op == Op.YAML and not report.stranded:
                report.stranded = stranded(records)
            j.append({"type": "begin", "undo": u.step, "op": u.op})
            try:
                for f in PATH_FIELDS:
                    if isinstance(u.rec.get(f), str) and u.rec.get("op") != Op.YAML:
                        _safe(root_of, u.rec[f], links)
                users = users_of(u, relied, head["target"])
                if users:
                    note = _keep(u, on_bytes)
                    if not note:
                        j.append({"type": "keep", "undo": u.step, "path": u.rec["dst"], "for": users,
                                  "rel": store_rel(u.rec["dst"], head["target"]),
                                  "digest": u.rec.get("digest"), "size": u.rec.get("size")})
                        report.kept.append(Problem(u.rec["dst"], "kept in the store: run(s) "
                                                   f"{', '.join(users)} rely on it"))
                elif u.op == Op.YAML and report.stranded:
                    note = (f"{len(report.stranded)} model file(s) are not back in the pod (e.g. "
                            f"{report.stranded[0].path}): the comfy-migrate section stays so their names "
                            "keep loading from the store")
                else:
                    said: List[str] = []
                    note = _undo(u, on_bytes, twins, said)
                    report.kept.extend(Problem(u.rec.get("path") or "", n) for n in said)
                    if note and shared and u.op == Op.MKDIR and u.rec["path"].startswith(in_store):
                        note = ""     # other runs' files live there
            except OSError as exc:
                note = fsops.describe(exc)
            if note:
                report.skipped.append(Problem(u.rec.get("src") or u.rec.get("dst") or u.rec.get("path", ""),
                                              f"not undone ({u.describe()}): {note}"))
                j.append({"type": "skip", "undo": u.step, "why": note})
            else:
                report.undone += 1
            j.append({"type": "done", "undo": u.step})
        if first_dir == len(undos):
            drop_handed()
        # Store folders that rolled-back runs made but could not remove then (another pod's files
        # were in them): the last of those rollbacks removes each once it is empty (deepest first).
        swept = []
        for d in sorted(set(left_folders), key=lambda p: (-p.count("/"), p)):
            try:
                _safe(root_of, d + "/x")
                fsops.remove_folder(d)
                swept.append(d)
            except OSError:
                continue
        if swept:
            j.append({"type": "swept", "folders": swept})
        for root in roots:      # scratch folders of a probe killed mid-way (a plan's, not in any log)
            fsops.sweep_probes(root)
        fsops.sweep_leftovers(state, [head.get("yaml"), head.get("yaml_real")])     # before the folder times
        j.append({"type": "dirtimes", "restored": _restore_dir_times(records)})
        if not report.stranded:
            report.stranded = stranded(records)
        if before_close is not None:
            before_close()
        j.append({"type": "close", "undone": report.undone, "skipped": len(report.skipped),
                  **({"incomplete": len(report.stranded)} if report.stranded else {})})
    finally:
        j.close()
    return report


def stranded(records: Sequence[dict]) -> List[Problem]:
    """Sources the run took away that are not back at their names while the store still holds their
    content (a copy back that failed): ComfyUI finds them only through the YAML's section. Steps
    that never happened left their source in place, so they count only where the source is gone."""
    out: List[Problem] = []
    for r in records:
        op = Op.of(r) if r.get("type") == "begin" else None
        if op is None or not op.returns_source:
            continue
        src = r.get("src")
        if not isinstance(src, str) or os.path.lexists(src):
            continue
        held = next((h for h in ([r.get("dst")] if op is Op.RENAME else _holders(r))
                     if isinstance(h, str) and _holds(h, r)), None)
        if held is not None and src not in {p.path for p in out}:
            out.append(Problem(src, f"not back; its content is only in the store at {held}"))
    return out


def _holds(path: str, r: dict) -> bool:
    """A regular file at `path` with the logged size and digest (read: only for a source not back)."""
    try:
        st = os.lstat(path)
        return stat.S_ISREG(st.st_mode) and st.st_size == r.get("size") and hash_path(path) == r.get("digest")
    except OSError:
        return False


def _drop_unbegun(path: str) -> Optional[int]:
    """Remove a log that holds no complete record (read_begun said None); its size in bytes, or None
    when there was none."""
    try:
        size = os.lstat(path).st_size
    except FileNotFoundError:
        return None
    fsops.remove_durably(path)
    return size


def _unmerge_yaml(path: str, cur: bytes, before: Optional[bytes], notes: List[str]) -> str:
    """Undo a run's YAML change in a file the user edited since: only our marked section goes (the
    previous one, if the YAML had one, comes back); every other byte stays. Written atomically, or
    not at all ('' when done, else why not)."""
    from migrate.core import comfy
    from migrate.core.errors import BadInput
    try:
        text = cur.decode("utf-8")
        new = comfy.remove_section(text, before.decode("utf-8") if before is not None else None, path)
    except (UnicodeDecodeError, BadInput) as exc:
        return f"extra_model_paths.yaml was edited since the run and cannot be undone in part ({exc}); left as it is"
    if new is None:
        if before is None:
            fsops.remove_durably(path)
            notes.append("edited since the run, but nothing of it but comments was left without the comfy-migrate "
                         "section: removed, as before the run (an empty YAML stops ComfyUI)")
            return ""
        new_bytes = before
    else:
        new_bytes = new.encode("utf-8")
    if new_bytes != cur:
        fsops.atomic_write(path, new_bytes, os.stat(path).st_mode & 0o7777)
        notes.append("edited since the run: only the comfy-migrate section was taken out, your edits kept")
    return ""


def _undo(u: Undo, on_bytes, twins: Optional[Dict[Tuple[int, int], List[str]]] = None,
          notes: Optional[List[str]] = None) -> str:
    """Apply one inverse step. Returns '' when done (or nothing was needed), else why it was skipped.
    `twins`: names restored so far per logged source inode (hardlinks come back as hardlinks).
    `notes`: what a step did other than as logged (a YAML edited since: only our section removed)."""
    twins = {} if twins is None else twins
    notes = [] if notes is None else notes
    r = u.rec
    op = u.op
    undo = UNDO.get(op)
    return undo(u, r, on_bytes, twins, notes) if undo is not None else f"unknown step kind {op!r}"


def _undo_mkdir(u: Undo, r: dict, on_bytes, twins: Dict[Tuple[int, int], List[str]], notes: List[str]) -> str:
    """Remove a folder the run made, if nothing was added to it since."""
    try:
        fsops.remove_folder(r["path"])
    except (FileNotFoundError, NotADirectoryError):
        pass        # gone, or a file of someone else's took its place: not ours to remove
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return "folder is not empty (files were added since); left in place"
        raise
    return ""


def _undo_link(u: Undo, r: dict, on_bytes, twins: Dict[Tuple[int, int], List[str]], notes: List[str]) -> str:
    """Remove a hardlink the run made (link: the source's, or moved back when the source is gone; dedupe: the stored copy's)."""
    op = u.op
    dst = r["dst"]
    want = (r["dev"], r["ino"]) if op == Op.LINK else (r["stored_dev"], r["stored_ino"])
    cur = _ino(dst)
    if cur is None or _never_made(u):
        return ""
    stable = r.get("_p_dst", identity.EXACT).stable_inode
    if stable and cur != want:
        return "the target file was replaced since the run; left in place"
    if op == Op.LINK and not (_as_logged(dst, r, "dst") if stable else _is_logged_file(dst, r, "dst", None)):
        return "the target file was changed since the run; left in place"
    if op == Op.LINK and _ino(r["src"]) is None:
        fsops.rename_noreplace(dst, r["src"])
        return ""
    if os.lstat(dst).st_nlink < 2 and not _src_holds(r):
        return f"another file now has the old name {r['src']}: this copy is the original's last; kept"
    fsops.remove(dst)
    return ""


def _undo_symlink(u: Undo, r: dict, on_bytes, twins: Dict[Tuple[int, int], List[str]], notes: List[str]) -> str:
    """Remove a symlink the run made to the stored copy, if it still says what the run wrote."""
    dst = r["dst"]
    if os.path.islink(dst) and os.readlink(dst) == r["to"]:
        fsops.remove(dst)
    return ""


def _undo_rename(u: Undo, r: dict, on_bytes, twins: Dict[Tuple[int, int], List[str]], notes: List[str]) -> str:
    """Move a renamed source back, if the stored file is still the one the run moved."""
    if _never_made(u):
        return ""
    cur = _ino(r["dst"])
    if cur is None or _ino(r["src"]) is not None:
        return "" if cur is None else "both names exist; left in place"
    stable = r.get("_p_dst", identity.EXACT).stable_inode
    if stable and cur != (r["dev"], r.get("dst_ino", r["ino"])):
        return "the target file was replaced since the run; left in place"
    if not (_as_logged(r["dst"], r, "dst") if stable else _is_logged_file(r["dst"], r, "dst", None)):
        return "the target file was changed since the run; left in place"
    fsops.make_folders(os.path.dirname(r["src"]))
    fsops.rename_noreplace(r["dst"], r["src"])
    return ""


def _undo_copy(u: Undo, r: dict, on_bytes, twins: Dict[Tuple[int, int], List[str]], notes: List[str]) -> str:
    """Remove a copy the run made, once its bytes are proven the run's (the source restored first if it is gone)."""
    tmp = r.get("tmp")
    if tmp and TEMP_MARK in tmp and os.path.lexists(tmp):
        fsops.remove(tmp)
    ino = r.get("dst_ino") or r.get("tmp_ino")
    dst = r["dst"]
    cur = _ino(dst)
    if cur is None or ino is None or _never_made(u):
        return ""
    if r.get("_p_dst", identity.EXACT).stable_inode and cur[1] != ino:
        return "the target file was replaced since the run; left in place"
    # This undo deletes the copy: first prove it holds exactly the bytes the run copied.
    if not _as_logged(dst, r, "dst") or hash_path(dst) != r["digest"]:
        return "the target copy was changed since the run; left in place"
    if _ino(r["src"]) is None:
        # The source is gone for good (its quarantine was purged): copy back, verify, then remove.
        if not _restore_from(dst, r, on_bytes):
            return "could not restore the source from the target copy; both kept"
    elif os.lstat(dst).st_nlink < 2 and not _src_holds(r):
        return f"another file now has the old name {r['src']}: this copy may be the original's last; kept"
    fsops.remove(dst)
    return ""


def _undo_yaml(u: Undo, r: dict, on_bytes, twins: Dict[Tuple[int, int], List[str]], notes: List[str]) -> str:
    """Put extra_model_paths.yaml back (only the comfy-migrate section, if the user edited it since)."""
    path = fsops.through_link(r["path"])
    cur = fsops.read_file(path)
    if r.get("before"):
        before = fsops.read_file(r["before"])
        if before is None or hash_bytes(before) != r["before_digest"]:
            return "the saved previous YAML is missing or damaged; YAML left as it is"
    else:
        before = None
    if cur == before:
        return ""
    if cur is None:
        return "extra_model_paths.yaml was deleted since the run; left so"
    if hash_bytes(cur) != r["after_digest"]:
        return _unmerge_yaml(path, cur, before, notes)
    if before is None:
        fsops.remove_durably(path)
    else:
        fsops.atomic_write(path, before, os.stat(path).st_mode & 0o7777)
        if r.get("before_mtime_ns"):
            fsops.set_mtime(path, r["before_mtime_ns"])
    return ""


def _undo_unlink(u: Undo, r: dict, on_bytes, twins: Dict[Tuple[int, int], List[str]], notes: List[str]) -> str:
    """Recreate a source name the store held as its inode: a hardlink, else a verified copy."""
    if _ino(r["src"]) is not None:
        return ""
    # The stored copy it trusted, else the run's own name for it (a dedupe link: another
    # pod's rollback may have removed the copy it was made from).
    names = _holders(r)
    for stored in names:
        if _ino(stored) == (r["dev"], r["ino"]) and _as_logged(stored, r, "dst"):
            fsops.make_folders(os.path.dirname(r["src"]))
            fsops.hardlink(stored, r["src"])
            return ""
    if not _restore_twin(r, twins, on_bytes, names):
        return "the stored copy changed; source not recreated"
    return ""


def _undo_quarantine(u: Undo, r: dict, on_bytes, twins: Dict[Tuple[int, int], List[str]], notes: List[str]) -> str:
    """Move a source back from quarantine (recreated from a stored copy if it was purged)."""
    if _ino(r["src"]) is not None:
        if _ino(r["src"]) == (r["dev"], r["ino"]) or not os.path.lexists(r["q"]):
            return ""
        return f"another file now has the old name; the original stays in quarantine at {r['q']}"
    if _is_logged_file(r["q"], r, "src", (r["dev"], r["ino"])) or (
            _ino(r["q"]) == (r["dev"], r["ino"]) and r.get("_p_src", identity.EXACT).stable_inode):
        fsops.make_folders(os.path.dirname(r["src"]))
        fsops.rename_noreplace(r["q"], r["src"])
        twins.setdefault((r["dev"], r["ino"]), []).append(r["src"])
        return ""
    # Purged: recreate it from the stored copy with the same digest, mode and mtime.
    if not _restore_twin(r, twins, on_bytes, _holders(r)):
        return "the quarantined file was purged and no stored copy has its content"
    return ""


def _undo_linkback(u: Undo, r: dict, on_bytes, twins: Dict[Tuple[int, int], List[str]], notes: List[str]) -> str:
    """Remove a link-back symlink, if it still says what the run wrote."""
    if os.path.islink(r["src"]) and os.readlink(r["src"]) == r["to"]:
        fsops.remove(r["src"])
    return ""


def _undo_relink(u: Undo, r: dict, on_bytes, twins: Dict[Tuple[int, int], List[str]], notes: List[str]) -> str:
    """Point a re-pointed symlink of the sources where it pointed before the run."""
    tmp = r.get("tmp")
    if tmp and TEMP_MARK in tmp and os.path.lexists(tmp):
        fsops.remove(tmp)
    src = r["src"]
    if not os.path.islink(src) or os.readlink(src) != r["to"]:
        return "" if os.path.islink(src) and os.readlink(src) == r["old"] else \
            "the symlink was changed since the run; left as it is"
    back = os.path.join(os.path.dirname(src), f".{os.path.basename(src)}{TEMP_MARK}restore")
    if os.path.lexists(back):
        fsops.remove(back)
    fsops.repoint_symlink(src, r["old"], back, r["mtime_ns"] if isinstance(r.get("mtime_ns"), int) else None)
    return ""


# The inverse of each step, by its op (steps.Op): each returns '' when done (or nothing was needed),
# else why it was skipped; each checks the disk is as the log left it before it changes anything.
UNDO: Dict[str, Callable[..., str]] = {
    Op.MKDIR: _undo_mkdir,
    Op.LINK: _undo_link,
    Op.DEDUPE: _undo_link,
    Op.SYMLINK: _undo_symlink,
    Op.RENAME: _undo_rename,
    Op.COPY: _undo_copy,
    Op.YAML: _undo_yaml,
    Op.UNLINK: _undo_unlink,
    Op.QUARANTINE: _undo_quarantine,
    Op.LINKBACK: _undo_linkback,
    Op.RELINK: _undo_relink,
}


def _made_here(rec: dict, path: str) -> bool:
    """Does `path` hold the file this placement step puts there: the source's inode (link, rename),
    the stored copy's (dedupe), the staged temporary's (copy)? Compared by inode alone: another pod
    mounting the same volume sees another st_dev. A symlink step's name holds its link text."""
    op = Op(rec["op"])
    if op is Op.SYMLINK:
        try:
            return os.path.islink(path) and os.readlink(path) == rec.get("to")
        except OSError:
            return False
    ino = op.placed_ino(rec)
    cur = _ino(path)
    if cur is not None and "_p_dst" in rec and not rec["_p_dst"].stable_inode and op is not Op.DEDUPE:
        return rec.get("digest") is not None and _is_logged_file(path, rec, "dst", None)
    return ino is not None and cur is not None and cur[1] == ino


def _never_made(u: Undo) -> bool:
    """A placement begun but never finished whose name does not hold the file it would have put
    there never happened (link, rename and a copy's publish are single calls that never clobber):
    the name is empty or another pod's file now, and there is nothing to undo."""
    return not u.finished and not _made_here(u.rec, u.rec["dst"])


def users_of(u: Undo, relied: Dict[str, List[str]], target: str) -> Optional[List[str]]:
    """The other runs relying on the stored file this undo would take out of the store (fleet.reliance),
    if the run put it there: a placement it only began, whose name holds another file, is not its own."""
    if u.op not in PLACES or _never_made(u):
        return None
    return relied.get(store_rel(u.rec.get("dst") or "", target) or "")


def settle(records: Sequence[dict], target: str) -> List[dict]:
    """The records, plus an `unplaced` record (in memory only) for each placement the run began but
    never finished whose name, where this pod mounts the store (`target`), does not hold the file the
    step would have put there. Link, rename and a copy's publish are single calls that never
    clobber, so such a step never happened: the pod was killed before it, and the file there now is
    another run's, which this run, continued, may have trusted with its source. Counted as its own
    placement it would neither be kept for this run nor ever leave the store (fleet.placed_by)."""
    steps = group_steps(list(records))
    logged = records[0].get("target") or ""
    prec = identity.precisions(list(records))
    out = list(records)
    for b in steps.begins:
        if b.get("op") not in PLACES_FILE or b["step"] in steps.done or not isinstance(b.get("dst"), str):
            continue
        rel = store_rel(b["dst"], logged)
        staged = [e["tmp_ino"] for e in steps.extra.get(b["step"], []) if e["type"] == "staged"]
        rec = dict(b, tmp_ino=staged[-1]) if staged else dict(b)
        rec["_p_dst"] = prec(b["dst"])      # unstable inode numbers: judged by content (_made_here)
        if rel is not None and not _made_here(rec, posixpath.join(target, rel)):
            out.append({"type": "unplaced", "step": b["step"], "dst": b["dst"]})
    return out


def settled(runs: Sequence[Tuple[str, List[dict]]], target: str) -> List[Tuple[str, List[dict]]]:
    """runlog.live_runs' runs, each settled (see `settle`): what fleet.reliance and droppable read."""
    return [(rid, settle(records, target)) for rid, records in runs]


def foresee(undos: Sequence[Undo]) -> Dict[int, str]:
    """For the dry run, read-only and without reading a byte: step -> why its source could not be
    recreated (no stored copy of its size is left and no other name of it comes back first), so the
    dry run never promises what the rollback will then refuse ("the stored copy changed")."""
    back: set = set()           # logged inodes a name of which this rollback gives back (in order)
    out: Dict[int, str] = {}
    for u in undos:
        r = u.rec
        if u.op not in REMOVES_SOURCE or "src" not in r or _ino(r["src"]) is not None:
            continue
        key = (r.get("dev"), r.get("ino"))
        if u.op == Op.QUARANTINE and isinstance(r.get("q"), str) and os.path.lexists(r["q"]):
            back.add(key)
            continue
        if key in back:
            continue
        left = []
        for p in _holders(r):
            try:
                st = os.stat(p)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_size == r.get("size", st.st_size):
                left.append(p)
        if left:
            back.add(key)
        else:
            gone = " and ".join(_holders(r)) or "its stored copy"
            out[u.step] = (f"cannot recreate {r['src']}: " + ("the quarantined copy was purged and " if u.op ==
                           Op.QUARANTINE else "") + f"no stored copy of it is left ({gone} missing or changed in size)")
    return out


def _holders(r: dict) -> List[str]:
    """Stored names that may hold a removed source's content: the copy it trusted, then its own name."""
    return list(dict.fromkeys(p for p in (r.get("stored"), r.get("dst")) if isinstance(p, str)))


def _drop_kept(k: dict, records: Sequence[dict]) -> str:
    """Remove a file an earlier rollback kept for this run, now that no run relies on it: only
    if every source of this run that trusted it is back as logged, and it still holds its content."""
    path = k["path"]
    for r in records:
        if r.get("type") == "begin" and r.get("op") in REMOVES_SOURCE and (r.get("stored") or r.get("dst")) == path:
            try:
                if not _as_logged(r["src"], r):
                    return f"{r['src']} is not back as it was"
            except FileNotFoundError:
                return f"{r['src']} is not back"
    if _ino(path) is None:
        return ""
    if not k.get("digest") or os.lstat(path).st_size != k.get("size") or hash_path(path) != k["digest"]:
        return "it was changed since it was kept"
    fsops.remove_durably(path)
    return ""


def _keep(u: Undo, on_bytes) -> str:
    """Leave a stored file other runs rely on, and give this run's source its name back (a dedupe's or a
    symlink's source comes back through the undo of its own removal: it stored no bytes of its own)."""
    r = u.rec
    if not Op(u.op).stores_source or _ino(r["src"]) is not None or _ino(r["dst"]) is None:
        return ""
    fsops.make_folders(os.path.dirname(r["src"]))
    if u.op == Op.LINK and _ino(r["dst"]) == (r["dev"], r["ino"]) and _as_logged(r["dst"], r, "dst"):
        fsops.hardlink(r["dst"], r["src"])
        return ""
    if not _restore_from(r["dst"], r, on_bytes):
        return "other runs rely on the stored file, and it no longer holds this source's content; left in place"
    return ""


def _restore_dir_times(records: Sequence[dict]) -> int:
    """Give each folder the run changed its mtime from before the run (a folder's first record wins:
    a continued run only adds the folders it touches first). Last, so no undo changes them again;
    folders only, never through a symlink planted since. Returns how many were set."""
    first: dict = {}
    for rec in records:
        if rec.get("type") == "dirtimes":
            for d, ns in rec.get("dirs", {}).items():
                first.setdefault(d, ns)
    roots = {records[0]["target"], *records[0]["sources"]}     # given by the user: may be symlinks
    links = run_links(records)      # store folders that were symlinks before the run (preflight.py)
    n = 0
    for d, ns in sorted(first.items(), reverse=True):
        try:
            follow = d in roots or (d in links and os.path.islink(d) and os.readlink(d) == links[d])
            st = os.stat(d, follow_symlinks=follow)
            if not stat.S_ISDIR(st.st_mode):
                continue
            # Always set, even when stat shows the value already: a FUSE mount (MooseFS) may show its
            # cached attributes while the server holds another time.
            fsops.set_times(d, st.st_atime_ns, ns, follow_symlinks=follow)
            n += st.st_mtime_ns != ns
        except OSError:
            continue
    return n


def _restore_twin(r: dict, twins: Dict[Tuple[int, int], List[str]], on_bytes, stored: Sequence[str]) -> bool:
    """Recreate a removed source whose file is gone: as a hardlink of a name of the same logged inode
    this rollback already gave back (two source names of one file come back as one file, not as
    two copies), else as a verified copy of a stored file with its content."""
    key = (r["dev"], r["ino"])
    for twin in twins.get(key, []):
        try:
            st = os.lstat(twin)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and _as_logged(twin, r):
            fsops.make_folders(os.path.dirname(r["src"]))
            fsops.hardlink(twin, r["src"])
            fsops.fsync_dir(os.path.dirname(r["src"]))
            return True
    if any(_restore_from(p, r, on_bytes) for p in stored):
        twins.setdefault(key, []).append(r["src"])
        return True
    return False


def _restore_from(stored: str, r: dict, on_bytes) -> bool:
    """Recreate r['src'] from a stored copy: copy to a temp, verify the digest, set mode/mtime, publish."""
    try:
        st = os.stat(stored, follow_symlinks=False)
    except FileNotFoundError:
        return False
    src = r["src"]
    fsops.make_folders(os.path.dirname(src))
    tmp = temp_name(os.path.dirname(src), os.path.basename(src), "restore")
    if os.path.lexists(tmp):
        fsops.remove(tmp)
    # The digest read decides (it must be the logged one): the stored copy's mtime may move while it is
    # read (rclone shows "now" until it has uploaded a file we wrote seconds ago).
    digest, _ = fsops.copy_and_hash(stored, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), tmp, on_bytes,
                                    mtime_may_move=True)
    if digest != r["digest"]:
        fsops.remove(tmp)
        return False
    fsops.set_mode(tmp, r["mode"])
    fsops.set_mtime(tmp, r["mtime_ns"])
    fsops.rename_noreplace(tmp, src)
    fsops.fsync_dir(os.path.dirname(src))
    return True


def purge_check(rec: dict) -> str:
    """Why a quarantined file may not be freed ('' if it may): both it and the stored copy it was
    judged identical to are read now and must have the digest the log holds. A log, a cache or the
    catalogue is a belief; only the bytes of both files decide (purge frees the last copy)."""
    stored = rec.get("stored") or rec.get("dst")
    for what, path in (("the quarantined file", rec["q"]), ("its stored copy", stored)):
        try:
            digest = hash_path(path)
        except OSError as exc:
            return f"{what} cannot be read ({fsops.describe(exc)})"
        if digest != rec["digest"]:
            return f"{what} does not hold the logged content"
    return ""
