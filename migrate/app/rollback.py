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
from migrate.disk.hashing import hash_bytes
from migrate.disk.identity import Observed, Precision
from migrate.disk.journal import Journal, read_begun, read_log, rollback_log_of
from migrate.core.model import Problem
from migrate.core.records import (DirTimes, Done, Header, Keep, Links, Record, RbClose, RbHeader, RbResume, Restored,
                                  Skip, Staged, Step, Swept, UndoBegin, UndoDone, Unplaced, group_steps, heads,
                                  placed_ino)
from migrate.disk.runlog import PATH_FIELDS
from migrate.disk.scan import TEMP_MARK, temp_name
from migrate.core.steps import PLACES, PLACES_FILE, REMOVES_SOURCE, Op

Twins = Dict[Tuple[Optional[int], Optional[int]], List[str]]


@dataclass(frozen=True)
class Undo:
    """The undo of one step: its begin record, its done and staged records (None where the log has
    none), and the precision of the filesystems its source and its stored name are on."""

    rec: Step
    done: Optional[Done] = None
    staged: Optional[Staged] = None
    p_src: Precision = identity.EXACT     # the source's filesystem (its name, its quarantine name)
    p_dst: Precision = identity.EXACT     # the store's

    @property
    def op(self):
        """The forward op being undone (steps.Op; the logged text for an op this version does not know)."""
        return self.rec.op

    @property
    def step(self) -> int:
        return self.rec.step

    @property
    def finished(self) -> bool:
        """The forward step was confirmed done."""
        return self.done is not None

    @property
    def source(self) -> Observed:
        """The source as the run observed it (its inode, size and mtime as scanned)."""
        return _source(self.rec)

    @property
    def placed_ino(self) -> Optional[int]:
        """The inode of the file this step put at its `dst` (records.placed_ino)."""
        return placed_ino(self.rec, self.done, self.staged)

    @property
    def placed(self) -> Observed:
        """The file at `dst` as the run left it: the inode it put there, the source's size, and the
        destination's own mtime observed after its publish where logged (a copy on MooseFS keeps whole
        seconds of the source's nanoseconds), else the source's."""
        mtime = self.done.dst_mtime_ns if self.done is not None and self.done.dst_mtime_ns is not None \
            else self.rec.mtime_ns
        return Observed(None, self.placed_ino, self.rec.size, mtime)

    def describe(self) -> str:
        op = self.rec.known
        return op.describe_undo(self.rec.to_json()) if op is not None else str(self.op)


def _source(r: Step) -> Observed:
    """A step's source as the run observed it (the device and inode logged as `src_dev`, `src_ino`)."""
    return Observed(r.src_dev, r.src_ino, r.size, r.mtime_ns)


def store_facts(target: str, records: Sequence[Record]) -> Tuple[dict, Dict[str, dict]]:
    """What the store's filesystem does now, no stronger than what it remembers (fsops.seen_facts),
    and that record for each of the run's roots on the store's filesystem (plan_rollback's `seen`):
    the store is probed again here, as every plan probes it, since one probe can be lucky."""
    fresh = fsops.fs_doc(fsops.probe_fs(target))
    merged = identity.weakest(fsops.seen_facts(target), fresh)
    head = records[0]
    assert isinstance(head, Header)
    try:
        dev = os.stat(target).st_dev
    except OSError:
        return merged, {}
    out: Dict[str, dict] = {}
    for root in [head.target] + list(head.sources):
        try:
            if isinstance(root, str) and os.stat(root).st_dev == dev:
                out[root] = merged
        except OSError:
            continue
    return merged, out


def plan_rollback(records: Sequence[Record], seen: Optional[Dict[str, dict]] = None) -> List[Undo]:
    """`seen`: root -> filesystem facts weaker than the run recorded (see identity.precisions)."""
    steps = group_steps(records)
    prec = identity.precisions(heads(records), seen)
    undos = []
    for b in reversed(steps.begins):
        done = steps.done.get(b.step)
        if b.step in steps.failed and not done and not (b.known is not None and b.known.may_act_failed):
            continue    # a failed step changed nothing (each is one atomic call)
        undos.append(Undo(b, done, steps.staged.get(b.step), prec(b.src or b.q or ""), prec(b.dst or "")))
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


def run_links(records: Sequence[Record]) -> Dict[str, str]:
    """The symlinked folders the run journalled before its first step (and a continued run's first)."""
    out: Dict[str, str] = {}
    for rec in records:
        if isinstance(rec, Links):
            for d, to in rec.dirs.items():
                out.setdefault(d, to)
    return out


def _as_logged(path: str, seen: Observed, p: Precision = identity.EXACT) -> bool:
    """Size and mtime still those the run observed (an in-place rewrite keeps the inode, not these), at
    the precision of the path's filesystem (the inode is another question: `_is_logged_file`)."""
    return not identity.changes(os.lstat(path), seen._replace(dev=None, ino=None), p, identity.Dev.IGNORE)


def _is_logged_file(path: str, seen: Observed, p: Precision, digest: Optional[str]) -> bool:
    """`path` is the file the run logged: its inode where the filesystem keeps inodes stable, else
    size + mtime + digest (identity.same_file), and in both cases size and mtime at its precision."""
    return identity.same_file(path, seen, p, digest)


def _src_holds(u: Undo) -> bool:
    """The old name holds the logged content again: the logged file itself, or a regular file with
    the logged digest (re-hashed: only reached when another file took the name)."""
    r = u.rec
    assert r.src is not None
    return _is_logged_file(r.src, u.source, u.p_src, r.digest) or identity.same_bytes(r.src, r.digest, r.size)


def _there(path: Optional[str]) -> bool:
    """Something is at `path` (not followed); a file where a folder was: not there."""
    try:
        os.lstat(path or "")
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False


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


def execute_rollback(log_path: str, records: List[Record], undos: List[Undo],
                     on_bytes: Optional[Callable[[int], None]] = None,
                     relied: Optional[Dict[str, List[str]]] = None, shared: bool = False,
                     handed: Sequence[Keep] = (), before_close: Optional[Callable[[], None]] = None,
                     left_folders: Sequence[str] = ()) -> RollbackReport:
    """Apply `undos` (journalled). `relied`: store-relative path -> other runs relying on it (fleet.reliance);
    such a file stays in the store (its source name is recreated) instead of being removed.
    `shared`: other runs use the store, so a store folder still holding files is expected.
    `handed`: keep records of earlier rollbacks that kept a file for this run and for no run still
    relying on it: once this run's sources are back, the file leaves the store as if its own.
    `before_close`: called before the closing record (execute_plan's)."""
    relied = relied or {}
    head = records[0]
    assert isinstance(head, Header)
    roots = [head.target] + list(head.sources)

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
        skipped_before = {r.undo for r in rb_records if isinstance(r, Skip)}
        done_before = {r.undo for r in rb_records if isinstance(r, UndoDone)} - skipped_before
        j.append(RbResume(os.getpid(), socket.gethostname()))
        report = RollbackReport(head.run, rb_path, resumed=True)
    else:
        # None, or one holding no complete record: an earlier rollback killed (or refused by a full
        # disk) before its first record reached the disk, so before its first undo. It did nothing;
        # we hold the lock, so no rollback is writing it now: it goes, and this one starts afresh.
        dropped = _drop_unbegun(rb_path)
        log_tail = read_log(log_path)[0][-1]["sum"]     # the run log as it was undone (its chain's end)
        j = Journal.create(rb_path, RbHeader(run=head.run, rollback_of=os.path.basename(log_path), tool=__version__,
                                             host=socket.gethostname(),
                                             time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                             log_tail=log_tail, unbegun_log_dropped=dropped),
                           again, room)
        report = RollbackReport(head.run, rb_path)

    def drop_handed() -> None:
        for k in handed:
            path = posixpath.join(head.target, k.rel or "")    # where this pod mounts the store
            step = f"drop:{k.rel}"
            if step in done_before:
                continue
            j.append(UndoBegin(step, Op.DROP_KEPT.value, path))
            try:
                _safe(root_of, path, links)
                note = _drop_kept(k, path, records)
            except OSError as exc:
                note = fsops.describe(exc)
            if note:
                report.kept.append(Problem(path, f"left in the store: {note}"))
                j.append(Skip(step, note))
            j.append(UndoDone(step))

    # Source names that were one inode before the run come back as one inode: logged (dev, ino) ->
    # the names of it restored by this rollback (see _restore_twin).
    twins: Twins = {}
    in_store = head.target.rstrip("/") + "/"
    # Kept files leave once this run's sources are back (every source removal undone: a continued
    # run has some before and some after its resume), before the store folders made since are
    # removed: those may hold nothing else.
    last_removal = max((i for i, u in enumerate(undos) if u.op in REMOVES_SOURCE), default=-1)
    first_dir = next((i for i, u in enumerate(undos) if i > last_removal and u.op == Op.MKDIR
                      and (u.rec.path or "").startswith(in_store)), len(undos))
    try:
        for i, u in enumerate(undos):
            if i == first_dir:
                drop_handed()
            if u.step in done_before:
                continue
            if u.op == Op.YAML and not report.stranded:
                report.stranded = stranded(records)
            j.append(UndoBegin(u.step, str(u.op)))
            try:
                for f in PATH_FIELDS:
                    if isinstance(getattr(u.rec, f), str) and u.op != Op.YAML:
                        _safe(root_of, getattr(u.rec, f), links)
                users = users_of(u, relied, head.target)
                if users:
                    note = _keep(u, on_bytes)
                    if not note:
                        dst = u.rec.dst or ""
                        j.append(Keep(u.step, dst, tuple(users), store_rel(dst, head.target), u.rec.digest,
                                      u.rec.size))
                        report.kept.append(Problem(dst, "kept in the store: run(s) "
                                                   f"{', '.join(users)} rely on it"))
                elif u.op == Op.YAML and report.stranded:
                    note = (f"{len(report.stranded)} model file(s) are not back in the pod (e.g. "
                            f"{report.stranded[0].path}): the comfy-migrate section stays so their names "
                            "keep loading from the store")
                else:
                    said: List[str] = []
                    note = _undo(u, on_bytes, twins, said)
                    report.kept.extend(Problem(u.rec.path or "", n) for n in said)
                    if note and shared and u.op == Op.MKDIR and (u.rec.path or "").startswith(in_store):
                        note = ""     # other runs' files live there
            except OSError as exc:
                note = fsops.describe(exc)
            if note:
                report.skipped.append(Problem(u.rec.src or u.rec.dst or u.rec.path or "",
                                              f"not undone ({u.describe()}): {note}"))
                j.append(Skip(u.step, note))
            else:
                report.undone += 1
            j.append(UndoDone(u.step))
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
            j.append(Swept(tuple(swept)))
        for root in roots:      # scratch folders of a probe killed mid-way (a plan's, not in any log)
            fsops.sweep_probes(root)
        fsops.sweep_leftovers(state, [head.yaml, head.yaml_real])     # before the folder times
        j.append(Restored(_restore_dir_times(records)))
        if not report.stranded:
            report.stranded = stranded(records)
        if before_close is not None:
            before_close()
        j.append(RbClose(report.undone, len(report.skipped), len(report.stranded) or None))
    finally:
        j.close()
    return report


def stranded(records: Sequence[Record]) -> List[Problem]:
    """Sources the run took away that are not back at their names while the store still holds their
    content (a copy back that failed): ComfyUI finds them only through the YAML's section. Steps
    that never happened left their source in place, so they count only where the source is gone."""
    out: List[Problem] = []
    for r in records:
        op = r.known if isinstance(r, Step) else None
        if op is None or not op.returns_source:
            continue
        src = r.src
        if not isinstance(src, str) or os.path.lexists(src):
            continue
        held = next((h for h in ([r.dst] if op is Op.RENAME else _holders(r))
                     if isinstance(h, str) and _holds(h, r)), None)
        if held is not None and src not in {p.path for p in out}:
            out.append(Problem(src, f"not back; its content is only in the store at {held}"))
    return out


def _holds(path: str, r: Step) -> bool:
    """A regular file at `path` with the logged size and digest (read: only for a source not back)."""
    try:
        return identity.same_bytes(path, r.digest, r.size)
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


def _undo(u: Undo, on_bytes, twins: Optional[Twins] = None, notes: Optional[List[str]] = None) -> str:
    """Apply one inverse step. Returns '' when done (or nothing was needed), else why it was skipped.
    `twins`: names restored so far per logged source inode (hardlinks come back as hardlinks).
    `notes`: what a step did other than as logged (a YAML edited since: only our section removed)."""
    twins = {} if twins is None else twins
    notes = [] if notes is None else notes
    r = u.rec
    op = u.op
    undo = UNDO.get(op)
    return undo(u, r, on_bytes, twins, notes) if undo is not None else f"unknown step kind {op!r}"


def _undo_mkdir(u: Undo, r: Step, on_bytes, twins: Twins, notes: List[str]) -> str:
    """Remove a folder the run made, if nothing was added to it since."""
    try:
        fsops.remove_folder(r.path or "")
    except (FileNotFoundError, NotADirectoryError):
        pass        # gone, or a file of someone else's took its place: not ours to remove
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return "folder is not empty (files were added since); left in place"
        raise
    return ""


def _holds_ino(path: Optional[str], ino: Optional[int]) -> bool:
    """`path` (not followed) is the logged inode `ino` (a logged observation: the device is not
    compared, identity.Dev.IGNORE). False when nothing is there or no inode was logged."""
    try:
        st = os.lstat(path or "")
    except (FileNotFoundError, NotADirectoryError):
        return False
    return ino is not None and not identity.changes(st, Observed(None, ino, None, None), identity.EXACT,
                                                    identity.Dev.IGNORE)


def _undo_link(u: Undo, r: Step, on_bytes, twins: Twins, notes: List[str]) -> str:
    """Remove a hardlink the run made (link: the source's, or moved back when the source is gone; dedupe: the stored copy's)."""
    op = u.op
    dst = r.dst or ""
    if not _there(dst) or _never_made(u):
        return ""
    stable = u.p_dst.stable_inode
    if stable and not _holds_ino(dst, r.src_ino if op == Op.LINK else r.stored_ino):
        return "the target file was replaced since the run; left in place"
    if op == Op.LINK and not (_as_logged(dst, u.placed, u.p_dst) if stable else
                              _is_logged_file(dst, u.placed, u.p_dst, r.digest)):
        return "the target file was changed since the run; left in place"
    if op == Op.LINK and not _there(r.src):
        fsops.rename_noreplace(dst, r.src)
        return ""
    if os.lstat(dst).st_nlink < 2 and not _src_holds(u):
        return f"another file now has the old name {r.src}: this copy is the original's last; kept"
    fsops.remove(dst)
    return ""


def _remove_own_symlink(path: str, to: Optional[str]) -> str:
    """Remove the symlink the run made at `path`, if it still says what the run wrote (`to`); else
    (gone, or changed since) leave it."""
    if os.path.islink(path) and os.readlink(path) == to:
        fsops.remove(path)
    return ""


def _undo_symlink(u: Undo, r: Step, on_bytes, twins: Twins, notes: List[str]) -> str:
    """Remove a symlink the run made to the stored copy, if it still says what the run wrote."""
    return _remove_own_symlink(r.dst or "", r.to)


def _undo_rename(u: Undo, r: Step, on_bytes, twins: Twins, notes: List[str]) -> str:
    """Move a renamed source back, if the stored file is still the one the run moved."""
    if _never_made(u):
        return ""
    dst, src = r.dst or "", r.src or ""
    if not _there(dst) or _there(src):
        return "" if not _there(dst) else "both names exist; left in place"
    stable = u.p_dst.stable_inode
    # its inode as observed after the rename (where logged), else the source's
    if stable and not _holds_ino(dst, u.done.dst_ino if u.done is not None and u.done.dst_ino is not None
                                 else r.src_ino):
        return "the target file was replaced since the run; left in place"
    if not (_as_logged(dst, u.placed, u.p_dst) if stable else _is_logged_file(dst, u.placed, u.p_dst, r.digest)):
        return "the target file was changed since the run; left in place"
    fsops.make_folders(os.path.dirname(src))
    fsops.rename_noreplace(dst, src)
    return ""


def _undo_copy(u: Undo, r: Step, on_bytes, twins: Twins, notes: List[str]) -> str:
    """Remove a copy the run made, once its bytes are proven the run's (the source restored first if it is gone)."""
    tmp = r.tmp
    if tmp and TEMP_MARK in tmp and os.path.lexists(tmp):
        fsops.remove(tmp)
    ino = u.placed_ino
    dst = r.dst or ""
    if not _there(dst) or ino is None or _never_made(u):
        return ""
    if u.p_dst.stable_inode and not _holds_ino(dst, ino):
        return "the target file was replaced since the run; left in place"
    # This undo deletes the copy: first prove it holds exactly the bytes the run copied.
    if not _as_logged(dst, u.placed, u.p_dst) or not identity.same_bytes(dst, r.digest):
        return "the target copy was changed since the run; left in place"
    if not _there(r.src):
        # The source is gone for good (its quarantine was purged): copy back, verify, then remove.
        if not _restore_from(dst, r, on_bytes):
            return "could not restore the source from the target copy; both kept"
    elif os.lstat(dst).st_nlink < 2 and not _src_holds(u):
        return f"another file now has the old name {r.src}: this copy may be the original's last; kept"
    fsops.remove(dst)
    return ""


def _undo_yaml(u: Undo, r: Step, on_bytes, twins: Twins, notes: List[str]) -> str:
    """Put extra_model_paths.yaml back (only the comfy-migrate section, if the user edited it since)."""
    path = fsops.through_link(r.path or "")
    cur = fsops.read_file(path)
    if r.before:
        before = fsops.read_file(r.before)
        if before is None or hash_bytes(before) != r.before_digest:
            return "the saved previous YAML is missing or damaged; YAML left as it is"
    else:
        before = None
    if cur == before:
        return ""
    if cur is None:
        return "extra_model_paths.yaml was deleted since the run; left so"
    if hash_bytes(cur) != r.after_digest:
        return _unmerge_yaml(path, cur, before, notes)
    if before is None:
        fsops.remove_durably(path)
    else:
        fsops.atomic_write(path, before, os.stat(path).st_mode & 0o7777)
        if r.before_mtime_ns:
            fsops.set_mtime(path, r.before_mtime_ns)
    return ""


def _undo_unlink(u: Undo, r: Step, on_bytes, twins: Twins, notes: List[str]) -> str:
    """Recreate a source name the store held as its inode: a hardlink, else a verified copy."""
    src = r.src or ""
    if _there(src):
        return ""
    # The stored copy it trusted, else the run's own name for it (a dedupe link: another
    # pod's rollback may have removed the copy it was made from).
    names = _holders(r)
    for stored in names:
        if _holds_ino(stored, r.src_ino) and _as_logged(stored, u.placed, u.p_dst):
            fsops.make_folders(os.path.dirname(src))
            fsops.hardlink(stored, src)
            return ""
    if not _restore_twin(u, twins, on_bytes, names):
        return "the stored copy changed; source not recreated"
    return ""


def _undo_quarantine(u: Undo, r: Step, on_bytes, twins: Twins, notes: List[str]) -> str:
    """Move a source back from quarantine (recreated from a stored copy if it was purged)."""
    src, q = r.src or "", r.q or ""
    if _there(src):
        if _holds_ino(src, r.src_ino) or not os.path.lexists(q):
            return ""
        return f"another file now has the old name; the original stays in quarantine at {q}"
    # the logged file: its inode where inodes are stable (its times may have moved in quarantine),
    # else size + mtime + digest
    if _holds_ino(q, r.src_ino) if u.p_src.stable_inode else _is_logged_file(q, u.source, u.p_src, r.digest):
        fsops.make_folders(os.path.dirname(src))
        fsops.rename_noreplace(q, src)
        twins.setdefault((r.src_dev, r.src_ino), []).append(src)
        return ""
    # Purged: recreate it from the stored copy with the same digest, mode and mtime.
    if not _restore_twin(u, twins, on_bytes, _holders(r)):
        return "the quarantined file was purged and no stored copy has its content"
    return ""


def _undo_linkback(u: Undo, r: Step, on_bytes, twins: Twins, notes: List[str]) -> str:
    """Remove a link-back symlink, if it still says what the run wrote."""
    return _remove_own_symlink(r.src or "", r.to)


def _undo_relink(u: Undo, r: Step, on_bytes, twins: Twins, notes: List[str]) -> str:
    """Point a re-pointed symlink of the sources where it pointed before the run."""
    tmp = r.tmp
    if tmp and TEMP_MARK in tmp and os.path.lexists(tmp):
        fsops.remove(tmp)
    src = r.src or ""
    if not os.path.islink(src) or os.readlink(src) != r.to:
        return "" if os.path.islink(src) and os.readlink(src) == r.old else \
            "the symlink was changed since the run; left as it is"
    back = os.path.join(os.path.dirname(src), f".{os.path.basename(src)}{TEMP_MARK}restore")
    if os.path.lexists(back):
        fsops.remove(back)
    fsops.repoint_symlink(src, r.old or "", back, r.mtime_ns if isinstance(r.mtime_ns, int) else None)
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


def _made_here(u: Undo, path: str) -> bool:
    """Does `path` hold the file this placement step puts there: the source's inode (link, rename),
    the stored copy's (dedupe), the staged temporary's (copy)? Compared by inode alone: another pod
    mounting the same volume sees another st_dev (identity.Dev.IGNORE); where the store's inodes are
    not stable, by size + mtime + digest. A symlink step's name holds its link text."""
    op = u.rec.known
    if op is Op.SYMLINK:
        try:
            return os.path.islink(path) and os.readlink(path) == u.rec.to
        except OSError:
            return False
    if _there(path) and not u.p_dst.stable_inode and op is not Op.DEDUPE:
        return u.rec.digest is not None and _is_logged_file(path, u.placed, u.p_dst, u.rec.digest)
    return _holds_ino(path, u.placed_ino)


def _never_made(u: Undo) -> bool:
    """A placement begun but never finished whose name does not hold the file it would have put
    there never happened (link, rename and a copy's publish are single calls that never clobber):
    the name is empty or another pod's file now, and there is nothing to undo."""
    return not u.finished and not _made_here(u, u.rec.dst or "")


def users_of(u: Undo, relied: Dict[str, List[str]], target: str) -> Optional[List[str]]:
    """The other runs relying on the stored file this undo would take out of the store (fleet.reliance),
    if the run put it there: a placement it only began, whose name holds another file, is not its own."""
    if u.op not in PLACES or _never_made(u):
        return None
    return relied.get(store_rel(u.rec.dst or "", target) or "")


def settle(records: Sequence[Record], target: str) -> List[Record]:
    """The records, plus an `unplaced` record (in memory only) for each placement the run began but
    never finished whose name, where this pod mounts the store (`target`), does not hold the file the
    step would have put there. Link, rename and a copy's publish are single calls that never
    clobber, so such a step never happened: the pod was killed before it, and the file there now is
    another run's, which this run, continued, may have trusted with its source. Counted as its own
    placement it would neither be kept for this run nor ever leave the store (fleet.placed_by)."""
    steps = group_steps(records)
    head = records[0]
    logged = head.target if isinstance(head, Header) else ""
    prec = identity.precisions(heads(records))
    out = list(records)
    for b in steps.begins:
        if b.op not in PLACES_FILE or b.step in steps.done or not isinstance(b.dst, str):
            continue
        rel = store_rel(b.dst, logged)
        # unstable inode numbers: judged by content (_made_here)
        u = Undo(b, None, steps.staged.get(b.step), prec(b.src or ""), prec(b.dst))
        if rel is not None and not _made_here(u, posixpath.join(target, rel)):
            out.append(Unplaced(b.step, b.dst))
    return out


def settled(runs: Sequence[Tuple[str, List[Record]]], target: str) -> List[Tuple[str, List[Record]]]:
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
        if u.op not in REMOVES_SOURCE or r.src is None or _there(r.src):
            continue
        key = (r.src_dev, r.src_ino)
        if u.op == Op.QUARANTINE and isinstance(r.q, str) and os.path.lexists(r.q):
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
            if stat.S_ISREG(st.st_mode) and not identity.changes(st, Observed(None, None, r.size, None)):
                left.append(p)
        if left:
            back.add(key)
        else:
            gone = " and ".join(_holders(r)) or "its stored copy"
            out[u.step] = (f"cannot recreate {r.src}: " + ("the quarantined copy was purged and " if u.op ==
                           Op.QUARANTINE else "") + f"no stored copy of it is left ({gone} missing or changed in size)")
    return out


def _holders(r: Step) -> List[str]:
    """Stored names that may hold a removed source's content: the copy it trusted, then its own name."""
    return list(dict.fromkeys(p for p in (r.stored, r.dst) if isinstance(p, str)))


def _drop_kept(k: Keep, path: str, records: Sequence[Record]) -> str:
    """Remove a file an earlier rollback kept for this run (`path`: where this pod mounts it), now that
    no run relies on it: only if every source of this run that trusted it is back as logged, and it
    still holds its content."""
    for r in group_steps(records).begins:
        if r.op in REMOVES_SOURCE and r.home == path:
            try:
                if not _as_logged(r.src or "", _source(r)):
                    return f"{r.src} is not back as it was"
            except FileNotFoundError:
                return f"{r.src} is not back"
    if not _there(path):
        return ""
    if not identity.same_bytes(path, k.digest, k.size):
        return "it was changed since it was kept"
    fsops.remove_durably(path)
    return ""


def _keep(u: Undo, on_bytes) -> str:
    """Leave a stored file other runs rely on, and give this run's source its name back (a dedupe's or a
    symlink's source comes back through the undo of its own removal: it stored no bytes of its own)."""
    r = u.rec
    src, dst = r.src or "", r.dst or ""
    if r.known is None or not r.known.stores_source or _there(src) or not _there(dst):
        return ""
    fsops.make_folders(os.path.dirname(src))
    if u.op == Op.LINK and _holds_ino(dst, r.src_ino) and _as_logged(dst, u.placed, u.p_dst):
        fsops.hardlink(dst, src)
        return ""
    if not _restore_from(dst, r, on_bytes):
        return "other runs rely on the stored file, and it no longer holds this source's content; left in place"
    return ""


def _restore_dir_times(records: Sequence[Record]) -> int:
    """Give each folder the run changed its mtime from before the run (a folder's first record wins:
    a continued run only adds the folders it touches first). Last, so no undo changes them again;
    folders only, never through a symlink planted since. Returns how many were set."""
    first: dict = {}
    for rec in records:
        if isinstance(rec, DirTimes):
            for d, ns in rec.dirs.items():
                first.setdefault(d, ns)
    head = records[0]
    assert isinstance(head, Header)
    roots = {head.target, *head.sources}     # given by the user: may be symlinks
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


def _restore_twin(u: Undo, twins: Twins, on_bytes, stored: Sequence[str]) -> bool:
    """Recreate a removed source whose file is gone: as a hardlink of a name of the same logged inode
    this rollback already gave back (two source names of one file come back as one file, not as
    two copies), else as a verified copy of a stored file with its content."""
    r = u.rec
    src = r.src or ""
    key = (r.src_dev, r.src_ino)
    for twin in twins.get(key, []):
        try:
            st = os.lstat(twin)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and _as_logged(twin, u.source, u.p_src):
            fsops.make_folders(os.path.dirname(src))
            fsops.hardlink(twin, src)
            fsops.fsync_dir(os.path.dirname(src))
            return True
    if any(_restore_from(p, r, on_bytes) for p in stored):
        twins.setdefault(key, []).append(src)
        return True
    return False


def _restore_from(stored: str, r: Step, on_bytes) -> bool:
    """Recreate r.src from a stored copy: copy to a temp, verify the digest, set mode/mtime, publish."""
    try:
        st = os.stat(stored, follow_symlinks=False)
    except FileNotFoundError:
        return False
    src = r.src or ""
    fsops.make_folders(os.path.dirname(src))
    tmp = temp_name(os.path.dirname(src), os.path.basename(src), "restore")
    if os.path.lexists(tmp):
        fsops.remove(tmp)
    # The digest read decides (it must be the logged one): the stored copy's mtime may move while it is
    # read (rclone shows "now" until it has uploaded a file we wrote seconds ago).
    digest, _ = fsops.copy_and_hash(stored, identity.observe(st), tmp, on_bytes, mtime_may_move=True)
    if digest != r.digest:
        fsops.remove(tmp)
        return False
    fsops.set_mode(tmp, r.mode if r.mode is not None else 0o644)
    fsops.set_mtime(tmp, r.mtime_ns)
    fsops.rename_noreplace(tmp, src)
    fsops.fsync_dir(os.path.dirname(src))
    return True


def purge_check(rec: Step) -> str:
    """Why a quarantined file may not be freed ('' if it may): both it and the stored copy it was
    judged identical to are read now and must have the digest the log holds. A log, a cache or the
    catalogue is a belief; only the bytes of both files decide (purge frees the last copy)."""
    for what, path in (("the quarantined file", rec.q), ("its stored copy", rec.home)):
        try:
            os.lstat(path or "")        # gone: said as unreadable (same_bytes says False)
            same = identity.same_bytes(path or "", rec.digest)
        except OSError as exc:
            return f"{what} cannot be read ({fsops.describe(exc)})"
        if not same:
            return f"{what} does not hold the logged content"
    return ""
