"""Run a Plan step by step through fsops, journalling each step before and after.

Phases: (A) place every file in the target (links, renames, verified copies, dedupe links);
(B) switch extra_model_paths.yaml; (C) only then remove source names (unlink where the target
holds the same inode, else rename into a quarantine folder) and leave symlinks back where asked.
Nothing is deleted: a run's destructive end is a rename into quarantine, emptied by `purge`.
"""
from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from migrate import __version__
from migrate.disk import fsops, identity
from migrate.core.errors import BadInput, NoSpace
from migrate.disk.hashing import confirm_digest, extras, hash_bytes
from migrate.disk.journal import RUNS_DIR, Journal, load_log
from migrate.core.records import (group_steps, Cleanup, Close, DirTimes, Done, Fail, Header, Links, Names, Record,
                                  Resume, Staged, Stayed, Step, Stopped)
from migrate.disk.lock import TargetLock
from migrate.disk.runlog import find_interrupted
from migrate.core.model import STATE_DIR, Action, ActionKind, Method, Plan, Problem, Removal, human
from migrate.disk.scan import TEMP_MARK, temp_name
from migrate.core.steps import RETURNS_SOURCE, STAGES_TEMP, Op

OnBytes = Callable[[int], None]

FULL = (errno.ENOSPC, errno.EDQUOT)     # a full store or quota: the run stops (exit 4), its log stays open
AGAIN = "free space, then `comfy-migrate run` (continues this run) or `comfy-migrate rollback` (undoes it)"


def state_dir(target: str) -> str:
    return os.path.join(target, STATE_DIR)


def new_run_id() -> str:
    """UTC time, then 5 hex digits of microseconds and one random one: ids sort in start order
    even within one second ("the newest run" is chosen by name), and pods rarely collide (the log
    is created O_EXCL, so a collision fails loudly rather than mixing two runs)."""
    now = time.time()
    return (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-"
            + f"{int(now % 1 * 1_000_000):05x}{os.urandom(1).hex()[0]}")


@dataclass
class RunReport:
    run_id: str
    log_path: str
    resumed: bool = False
    steps_done: int = 0
    placed: int = 0
    copied_bytes: int = 0
    removed: int = 0
    quarantine_bytes: int = 0
    yaml_written: bool = False
    problems: List[Problem] = field(default_factory=list)
    lock_note: str = ""
    notes: List[str] = field(default_factory=list)     # said, not failures (a store folder not made)

    @property
    def ok(self) -> bool:
        return not self.problems


class _Runner:
    def __init__(self, plan: Plan, journal: Journal, report: RunReport, on_bytes: Optional[OnBytes]) -> None:
        self.plan = plan
        self.j = journal
        self.report = report
        self.on_bytes = on_bytes
        self.failed: set = set()
        self.copied_instead: set = set()   # actions whose link/rename was refused and copied
        self.stopped: Optional[OSError] = None    # the disk filled: no further step (see execute_plan)
        self.renamed = False                       # a source left its place in phase A (a rename)
        self.links: Dict[str, List[str]] = {}      # a moved file's store name -> in-tree symlinks to re-point
        self.relinked: set = set()                 # symlinks re-pointed (or judged) by this process
        self.chunk = fsops.copy_chunk(plan.target_fs.fstype)     # big writes into a FUSE store

    # -- link texts: relative (the volume may be mounted elsewhere), unless the filesystem cannot read
    # back a link through `..` (sshfs, FsFacts.up_links): then the absolute path --
    def up_links(self, path: str) -> bool:
        probe = next((p for p in self.plan.probes if path.startswith(p.source.rstrip("/") + "/")), None)
        return probe.fs.up_links if probe is not None else True

    @staticmethod
    def link_text(home: str, folder: str, up_links: bool) -> str:
        rel = os.path.relpath(home, folder)
        return rel if up_links or ".." not in rel.split("/") else home

    # -- journalling helpers --
    def begin(self, op: Op, **fields) -> int:
        step = self.j.seq + 1     # a step is named by its begin record's sequence number
        self.j.append(Step(step=step, op=op, **fields))
        return step

    def done(self, step: int, st: Optional[os.stat_result] = None) -> None:
        """The step finished; `st`: a placement's destination as published (see `observed`)."""
        # Not fsynced on its own: the next record (a begin, written ahead of its step, or the
        # close) is, and an append-only file's fsync makes every earlier line durable with it. A
        # power cut before then loses at most this line: the same state as a crash between the
        # step and its record, which a continued run and rollback already handle (they look at the
        # disk). On a network volume every fsync is a round trip: this halves the log's.
        self.j.append(Done(step, *((st.st_ino, st.st_dev, st.st_mtime_ns) if st is not None else ())), sync=False)
        self.report.steps_done += 1

    def fail(self, step: int, a: Optional[Action], path: str, exc: BaseException) -> None:
        msg = f"{getattr(exc, 'strerror', None) or exc}"
        other = getattr(exc, "filename", None)
        if getattr(exc, "op", None) or (other and other != path):     # said where and in which operation
            msg = fsops.describe(exc)     # type: ignore[arg-type]
        self.j.append(Fail(step, msg))
        self.report.problems.append(Problem(path, msg))
        if a is not None:
            self.failed.add(id(a))
        self.note_full(exc)

    def note_full(self, exc: BaseException) -> None:
        """A full disk stops the run after this step: every later copy would fail the same way, and
        a run left open is continued by `run` and undone whole by one `rollback`."""
        if isinstance(exc, OSError) and exc.errno in FULL and self.stopped is None:
            self.stopped = exc

    def mkdirs(self, path: str, root: str) -> None:
        """Create missing folders up to `path` below `root`, each journalled (rollback removes them)."""
        missing = []
        p = path
        while not os.path.isdir(p) and p.startswith(root.rstrip("/") + "/"):
            missing.append(p)
            p = os.path.dirname(p)
        for d in reversed(missing):
            s = self.begin(Op.MKDIR, path=d)
            try:
                fsops.make_folder(d)
            except FileExistsError:
                if not os.path.isdir(d):        # a file took the name since the plan
                    self.j.append(Fail(s, "a file is in the way"))
                    raise OSError(errno.ENOTDIR, "a file is where a folder is needed", d) from None
            except OSError as exc:
                self.j.append(Fail(s, exc.strerror or str(exc)))
                raise
            self.done(s)

    def made_folder(self, path: str, root: str, a: Action, what: str) -> bool:
        """mkdirs, a failure of which is this action's problem (data), not the run's end."""
        try:
            self.mkdirs(path, root)
            return True
        except OSError as exc:
            self.report.problems.append(Problem(a.source, f"cannot create {what} {exc.filename or path}: "
                                                f"{exc.strerror or exc}; the file stays where it is"))
            self.failed.add(id(a))
            self.note_full(exc)
            return False

    # -- phase A: placement --
    def place(self, a: Action) -> None:
        assert a.dst is not None
        if not self.made_folder(os.path.dirname(a.dst), self.plan.target, a, "the store folder"):
            return
        facts = dict(src=a.source, dst=a.dst, size=a.size, digest=a.digest, src_dev=a.dev, src_ino=a.ino, mode=a.mode,
                     mtime_ns=a.mtime_ns, kind=a.kind.value)
        stored = None
        if a.kind is ActionKind.SAME_CONTENT and a.method is not Method.COPY:
            stored = self._stored_copy(a, facts)
            if stored is None:
                return
        # The plan's methods in order (Action.methods): the next one only where the filesystem refused
        # this one with an errno named for that pair (fsops.FALLS_BACK_ON). Each try is its own step,
        # its begin naming its method, the plan's list and the errno that made the one before give up;
        # the one with a done record placed the file (rollback undoes that one).
        methods = a.methods
        refused: Optional[str] = None
        for i, method in enumerate(methods):
            later = methods[i + 1] if i + 1 < len(methods) else None
            named = fsops.FALLS_BACK_ON.get((method, later), ()) if later is not None else ()
            tried = dict(facts, method=method.value)
            if len(methods) > 1:
                tried["methods"] = tuple(m.value for m in methods)
            if refused is not None:
                tried["fallback"] = refused
            if method is Method.COPY and i:
                # A move still completes as a verified copy; its source then goes to quarantine.
                self.copied_instead.add(id(a))
            refused = self._place_by(a, method, tried, named, later, stored)
            if refused is None:
                return

    def _place_by(self, a: Action, method: Method, facts: dict, named: Sequence[int], later: Optional[Method],
                  stored: Optional[os.stat_result]) -> Optional[str]:
        """One method's step. Returns the errno's name when the filesystem refused it with one of
        `named` (the next method is tried; the refusal is journalled as this step's failure);
        otherwise None: placed, or failed as a problem of this action (journalled)."""
        if method is Method.COPY:
            self._copy(a, facts)
            return None
        if a.kind is ActionKind.SAME_CONTENT:
            assert stored is not None
            return self._dedupe(a, method, facts, named, later, stored)
        return self._link_or_rename(a, method, facts, named, later)

    def _refused(self, step: int, exc: OSError, named: Sequence[int], later: Optional[Method]) -> Optional[str]:
        """The errno's name if `exc` is one on which the plan's next method is tried (journalled)."""
        if later is None or exc.errno not in named:
            return None
        instead = {Method.COPY: "copying instead", Method.SYMLINK: "a symlink instead"}.get(later, f"{later.value} instead")
        self.j.append(Fail(step, f"{exc.strerror}; {instead}"))
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))

    def _stored_copy(self, a: Action, facts: dict) -> Optional[os.stat_result]:
        """The stat of a dedupe's stored copy, still a regular file of the size the plan saw; None when it
        changed since (the step fails, journalled, and nothing is linked)."""
        assert a.stored is not None and a.dst is not None
        try:
            st = os.lstat(a.stored)
            # replaced since the plan (it knows the stored copy by its size: identity.changes)
            if not stat.S_ISREG(st.st_mode) or identity.changes(st, identity.Observed(None, None, a.size, None)):
                raise OSError(errno.ESTALE, "the stored copy changed since the plan; nothing linked", a.stored)
        except OSError as exc:
            s = self.begin(Op.DEDUPE, stored=a.stored, **facts)
            self.fail(s, a, a.dst, exc)
            return None
        return st

    def _dedupe(self, a: Action, method: Method, facts: dict, named: Sequence[int], later: Optional[Method],
                st: os.stat_result) -> Optional[str]:
        assert a.stored is not None and a.dst is not None
        if method is Method.HARDLINK:
            s = self.begin(Op.DEDUPE, stored=a.stored, stored_ino=st.st_ino, stored_dev=st.st_dev, **facts)
            return self._attempt(s, a, lambda: fsops.link_noreplace(a.stored, a.dst), a.dst, named, later)
        to = self.link_text(a.stored, os.path.dirname(a.dst), self.plan.target_fs.up_links)
        s = self.begin(Op.SYMLINK, to=to, **facts)
        return self._attempt(s, a, lambda: fsops.make_symlink(to, a.dst), a.dst, named, later)

    def _attempt(self, s: int, a: Action, act: Callable[[], None], path: str, named: Sequence[int],
                 later: Optional[Method], stat_of: Optional[str] = None,
                 then: Optional[Callable[[], None]] = None) -> Optional[str]:
        """Step `s` (begun) of placing `a`: `act` places the file. Placed: its done record (with the stat
        of `stat_of` as published, see `observed`), counted, then `then`; returns None. Refused with an
        errno on which the plan's next method is tried: that errno's name (`_refused` journals it). Any
        other OSError: the step's failure, journalled against `path`; returns None."""
        try:
            act()
        except OSError as exc:
            refused = self._refused(s, exc, named, later)
            if refused is None:
                self.fail(s, a, path, exc)
            return refused
        self.done(s, observed(stat_of) if stat_of is not None else None)
        self.report.placed += 1
        if then is not None:
            then()
        return None

    def _link_or_rename(self, a: Action, method: Method, facts: dict, named: Sequence[int],
                        later: Optional[Method]) -> Optional[str]:
        """Place by hardlink or rename. Returns the errno name when the filesystem refused with one of
        `named` and the plan's next method is to be tried; otherwise handles its own failure."""
        assert a.dst is not None
        op = Op.LINK if method is Method.HARDLINK else Op.RENAME
        links = self.links.get(a.dst, []) if op is Op.RENAME else []
        s = self.begin(op, **facts, links=tuple(links))

        def act() -> None:
            if identity.changes(os.lstat(a.source), seen(a)):
                raise OSError(errno.ESTALE, "changed since it was scanned", a.source)
            if op is Op.LINK:
                fsops.link_noreplace(a.source, a.dst)
            else:
                fsops.rename_noreplace(a.source, a.dst)

        def moved() -> None:
            self.renamed = True
            self.relink_all(links, a.dst)

        return self._attempt(s, a, act, a.source, named, later, stat_of=a.dst,
                             then=moved if op is Op.RENAME else None)

    def _copy(self, a: Action, facts: dict) -> None:
        assert a.dst is not None
        src = a.source
        tmp = temp_name(os.path.dirname(a.dst), os.path.basename(a.dst), self.report.run_id)
        s = self.begin(Op.COPY, tmp=tmp, **facts)
        try:
            # SHA-256 and BLAKE3 of this content came with the scan's read (or the cache): not again
            digest, st = fsops.copy_and_hash(src, seen(a), tmp, self.on_bytes, chunk=self.chunk,
                                             extra=None if extras(a.digest) is None else False)
            if digest != a.digest:
                fsops.remove(tmp)
                raise OSError(errno.EIO, f"copy digest {digest} differs from the scanned {a.digest}", src)
            self.j.append(Staged(s, st.st_ino, st.st_dev))
            fsops.rename_noreplace(tmp, a.dst)
            fsops.fsync_dir(os.path.dirname(a.dst))
        except BaseException as exc:
            if os.path.lexists(tmp):     # never leave a half-made copy, whatever stopped us
                fsops.discard(tmp)
            if not isinstance(exc, OSError):
                raise
            return self.fail(s, a, src, exc)
        self.done(s, observed(a.dst, st))
        self.report.copied_bytes += a.size
        self.report.placed += 1

    # -- phase B --
    def make_store_folders(self) -> None:
        """Every category folder the YAML lists, made in the store (journalled mkdirs): a folder that
        cannot be made is said in the report's notes, no failure."""
        plan, report = self.plan, self.report
        for folder in plan.store_folders:
            # Never from the room the run keeps for its log and a rollback (plan.reserve_bytes):
            # where a folder takes a block (exFAT: 1 MiB), a nearly full store gets fewer.
            block = plan.target_fs.block
            if block and not os.path.isdir(folder) and fsops.free_space(plan.target) - plan.reserve_bytes < 2 * block:
                report.notes.append(f"store folder {folder} not made: the store is nearly full (its free space "
                                    "is kept for the run's log and a rollback); `comfy-migrate attach` makes it later")
                continue
            try:
                self.mkdirs(folder, plan.target)
            except OSError as exc:      # ComfyUI skips a missing folder: said, no failure (no model is in it)
                report.notes.append(f"cannot make the store folder {folder} ({fsops.describe(exc)}): a download "
                                    "of that category lands elsewhere until `comfy-migrate attach` makes it")

    def write_yaml(self) -> None:
        plan = self.plan
        assert plan.yaml_path is not None and plan.yaml_after is not None
        real = fsops.through_link(plan.yaml_path)
        current = fsops.read_file(real)
        cur_text = current.decode("utf-8", "surrogateescape") if current is not None else None
        if cur_text != plan.yaml_before:
            raise BadInput(f"{plan.yaml_path} changed since the plan was made; no source was removed",
                           "run `comfy-migrate run` again to plan with the new file")
        pre = os.path.join(state_dir(plan.target), "yaml", f"{self.report.run_id}.{self.j.seq + 1}.before")
        if current is not None:
            fsops.make_folders(os.path.dirname(pre))
            fsops.atomic_write(pre, current)
        after = plan.yaml_after.encode("utf-8")
        s = self.begin(Op.YAML, path=plan.yaml_path, before=pre if current is not None else None,
                       before_digest=hash_bytes(current) if current is not None else None,
                       after_digest=hash_bytes(after),
                       before_mtime_ns=os.stat(real).st_mtime_ns if current is not None else None)
        mode = os.stat(real).st_mode & 0o7777 if current is not None else 0o644
        fsops.atomic_write(real, after, mode)
        self.done(s)
        self.report.yaml_written = True

    # -- phase C: sources --
    def set_sources_aside(self) -> None:
        """Once the YAML finds the store: each source the plan removes is unlinked or quarantined (one
        copied instead of linked or renamed: quarantined), a renamed one linked back where asked, except
        where its placement failed; then the sources' symlinks re-pointed. A full disk stops it."""
        for a in self.plan.actions:
            if self.stopped is not None:
                break
            if id(a) in self.failed:
                continue
            if id(a) in self.copied_instead:
                self.remove_source(a._replace(removal=Removal.QUARANTINE))
            elif a.removal in (Removal.UNLINK, Removal.QUARANTINE):
                self.remove_source(a)
            elif a.removal is Removal.RENAMED and a.link_back and a.dst:
                self.link_back(a)
        for a in self.plan.actions:
            if a.kind is ActionKind.RELINK and self.stopped is None:
                self.relink(a)

    def remove_source(self, a: Action) -> None:
        src = a.source
        links = [] if a.link_back else self.links.get(a.dst or "", [])
        # links: re-pointed right after the removal; a continued run finishes them (finish_relinks)
        facts = dict(src=src, dst=a.dst, size=a.size, digest=a.digest, src_dev=a.dev, src_ino=a.ino, mode=a.mode,
                     mtime_ns=a.mtime_ns, stored=a.stored or a.dst, links=tuple(links))
        expect = seen(a)
        if a.removal is Removal.UNLINK:
            s = self.begin(Op.UNLINK, **facts)
            try:
                st, dst_st = os.lstat(src), os.lstat(a.stored or a.dst)
                if identity.changes(st, expect) or identity.changes(dst_st, expect._replace(size=None, mtime_ns=None)):
                    raise OSError(errno.ESTALE, "source or target changed; source kept", src)
                fsops.remove_durably(src)
            except OSError as exc:
                return self.fail(s, a, src, exc)
            self.done(s)
        else:
            q = os.path.join(a.root, STATE_DIR, "quarantine", self.report.run_id, a.rel)
            if not self.made_folder(os.path.dirname(q), a.root, a, "the quarantine folder"):
                return
            s = self.begin(Op.QUARANTINE, q=q, **facts)
            try:
                if identity.changes(os.lstat(src), expect):
                    raise OSError(errno.ESTALE, "changed since it was scanned; source kept", src)
                if a.kind in (ActionKind.ALREADY_THERE, ActionKind.SAME_CONTENT) and not confirm_digest(src, a.digest):
                    # The store holds this content, the plan believed: only the bytes can say so.
                    raise OSError(errno.ESTALE, "its bytes differ from the digest the plan used; source kept", src)
                _check_held(a)
                fsops.rename_noreplace(src, q)
                fsops.fsync_dir(os.path.dirname(src))
            except OSError as exc:
                return self.fail(s, a, src, exc)
            self.done(s)
            self.report.quarantine_bytes += a.size
        self.report.removed += 1
        if a.link_back and a.dst:
            self.link_back(a)
        self.relink_all(links, a.dst or "")

    def link_back(self, a: Action) -> None:
        """A symlink at the source's old place to its new home, relative between the real folders:
        it keeps working when the volume holding both is mounted at another path."""
        assert a.dst is not None
        src = a.source
        # attach recreates a link-back in a container rebuilt from its image: its folder may be gone
        if not self.made_folder(os.path.dirname(src), a.root, a, "the folder of the link"):
            return
        try:
            home = os.path.join(os.path.realpath(os.path.dirname(a.dst)), os.path.basename(a.dst))
            to = self.link_text(home, os.path.realpath(os.path.dirname(src)), self.up_links(src))
        except OSError:
            to = a.dst
        s = self.begin(Op.LINKBACK, src=src, to=to)
        try:
            fsops.make_symlink(to, src)
        except OSError as exc:
            return self.fail(s, None, src, exc)
        self.done(s)


    def relink(self, a: Action) -> None:
        assert a.dst is not None
        self.relink_path(a.source, a.dst)

    def relink_all(self, links: Sequence[str], dst: str) -> None:
        """Re-point the in-tree symlinks of a file that just left its place: part of its removal."""
        for link in links:
            if self.stopped is None:
                self.relink_path(link, dst)

    def relink_path(self, src: str, dst: str) -> None:
        """Re-point a symlink of the sources whose file moved (it dangles now) at the file's new
        place: relative between the real folders, as a link back. Journalled with its old text and
        mtime: rollback puts both back. A link that still leads somewhere is not ours to change."""
        if src in self.relinked:
            return
        self.relinked.add(src)
        try:
            st = os.lstat(src)
            folder = os.path.isdir(dst)     # a symlinked folder whose model files all moved there
            if not stat.S_ISLNK(st.st_mode) or (os.path.exists(src) and not folder) or not (
                    folder or os.path.isfile(dst)):
                return      # changed since the plan, or its file did not move (a step failed): it still works
            old = os.readlink(src)
            home = os.path.join(os.path.realpath(os.path.dirname(dst)), os.path.basename(dst))
            to = self.link_text(home, os.path.realpath(os.path.dirname(src)), self.up_links(src))
        except OSError as exc:
            self.report.problems.append(Problem(src, f"symlink not re-pointed: {exc.strerror or exc}"))
            return
        tmp = os.path.join(os.path.dirname(src), f".{os.path.basename(src)}{TEMP_MARK}{self.report.run_id}")
        s = self.begin(Op.RELINK, src=src, dst=dst, tmp=tmp, old=old, to=to, mtime_ns=st.st_mtime_ns)
        try:
            fsops.repoint_symlink(src, to, tmp)
        except OSError as exc:
            return self.fail(s, None, src, exc)
        self.done(s)

    def finish_relinks(self, records: List[Record]) -> None:
        """A continued run first completes the removals of the run it continues: a source that left
        its place (unlink, quarantine, rename) takes its in-tree symlinks along (their re-pointing is
        part of the removal, listed in its begin record), even when the kill came in between."""
        steps = group_steps(records)
        relinked = {b.src for b in steps.begins if b.op is Op.RELINK and b.step in steps.done}
        head = records[0]
        roots = tuple(s.rstrip("/") + "/" for s in (head.sources if isinstance(head, Header) else ()))
        for b in steps.begins:
            if b.op not in RETURNS_SOURCE or not b.links or b.dst is None or b.src is None:
                continue
            if os.path.lexists(b.src) and not os.path.islink(b.src):
                continue        # the source is still at its place: the step never happened
            self.relink_all([p for p in b.links if isinstance(p, str) and p.startswith(roots)
                             and p not in relinked], b.dst)


def seen(a: Action) -> identity.Observed:
    """What the scan observed of an action's source: the run compares the source with it before each
    step (one host, one mount since the scan: the device number counts, mtimes exactly)."""
    return identity.Observed(a.dev, a.ino, a.size, a.mtime_ns)


def observed(path: str, fallback: Optional[os.stat_result] = None) -> Optional[os.stat_result]:
    """The destination's own stat right after its publish, logged with the step's done record: what
    rollback and verify compare with (identity), not the source's facts (a filesystem with coarser
    times keeps a copy's mtime rounded)."""
    try:
        return os.lstat(path)
    except OSError:
        return fallback


def _check_held(a: Action) -> None:
    """Before a source is set aside: the target still holds a file of its size under the name ComfyUI
    will load. An "already there" copy or the stored copy of a dedupe was only seen by the scan (or
    was to be placed by a step that failed); if it vanished since, the source must stay."""
    try:
        st = os.stat(a.dst or "")     # followed: a dedupe's name may be a symlink to the stored copy
    except OSError:
        st = None
    # The plan knows only its size (the scan's record of it is another pod's mount, or none): the
    # source's own bytes are compared with the plan's digest before it goes (remove_source).
    if st is None or not stat.S_ISREG(st.st_mode) or identity.changes(st, identity.Observed(None, None, a.size, None)):
        raise OSError(errno.ESTALE, "its copy in the target is missing or changed since the plan; source kept",
                      a.source)


def execute_plan(plan: Plan, argv: List[str], on_bytes: Optional[OnBytes] = None,
                 lock: Optional[TargetLock] = None,
                 before_close: Optional[Callable[[str], None]] = None, kind: str = "run") -> RunReport:
    """Execute `plan` under the target's lock; returns the report (per-file problems are data).

    `lock`: the target's lock, already held by the caller (who made `plan` under it); otherwise
    it is taken here, failing at once if another run holds it. `before_close(run_id)`: called
    after the last step, before the closing record (the store's catalogue is rewritten there:
    killed before it, the run is still open and its next run finishes it). `kind`: "attach" for
    the YAML-only runs of `comfy-migrate attach` (logged in the header; a run's header has none).
    """
    if not plan.fits:
        raise NoSpace(f"the target has {human(plan.free_bytes or 0)} free but the plan needs {human(plan.space_to_take)} "
                      f"there ({human(plan.bytes_to_copy)} copied, counted in the store's allocation unit, with "
                      f"{human(plan.reserve_bytes)} for the lock, the log and a rollback)",
                      "free space on the target, or migrate fewer sources")
    if not plan.container_fits:
        raise NoSpace(f"the container disk has {plan.container_free} bytes free, but setting the overlay sources "
                      f"aside may copy {plan.container_bytes} bytes up onto it", "free space on the container "
                      "disk, or migrate with --mode copy (sources stay)")
    sd = state_dir(plan.target)
    times = dir_times(plan)     # before our state folder changes the target's own mtime
    fsops.make_folders(sd)
    with (contextlib.nullcontext(lock) if lock is not None else TargetLock(sd, "comfy-migrate run")) as lock:
        if plan.space_to_take > fsops.free_space(plan.target):
            raise NoSpace("the target no longer has room for the plan's copies", "free space, then run again")
        try:        # room a rollback finds on a store that fills up (it releases it: rollback.py)
            fsops.keep_reserve(sd, fsops.reserve_bytes(len(plan.actions), fsops.allocation_unit(sd)))
        except OSError as exc:
            if exc.errno not in FULL:
                raise
            raise NoSpace(f"the target has no room left for the reserve a rollback needs on a full disk "
                          f"({fsops.describe(exc)})", "free space on the target, then run again") from None
        fsops.sweep_leftovers(sd, [plan.yaml_path])
        if plan.yaml_path is not None and plan.yaml_changes:
            cur = fsops.read_file(fsops.through_link(plan.yaml_path))
            if (cur.decode("utf-8", "surrogateescape") if cur is not None else None) != plan.yaml_before:
                raise BadInput(f"{plan.yaml_path} changed since the plan was made; nothing was changed",
                               "run again to plan with the new file")
        resume = find_interrupted(plan.target, plan.sources, plan.yaml_path)
        header = dict(tool=__version__, argv=tuple(argv), host=socket.gethostname(), pid=os.getpid(),
                      time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), sources=tuple(plan.sources),
                      target=plan.target, yaml=plan.yaml_path, mode=plan.policy.mode.value, fs=fs_record(plan),
                      kind=None if kind == "run" else kind,
                      # how ComfyUI is started: verify and rollback resolve names as it does
                      comfyui=None if plan.launch is None else {"main": plan.launch.comfyui,
                                                                "args": list(plan.launch.args),
                                                                "from": plan.launch.origin},
                      # a symlinked YAML: the file written, whose folder's mtime changes
                      yaml_real=yaml_behind(plan))
        remember_facts(plan)
        j, report, records = _open_log(plan, sd, header, times, resume)
        links = links_on_way(plan)
        if links:       # rollback accepts these symlinked store folders, and no other (preflight.py)
            j.append(Links(links))
        if lock.took_over:
            report.lock_note = f"took over a stale lock ({lock.took_over.get('reason')})"
        r = _Runner(plan, j, report, on_bytes)
        for a in plan.actions:
            if a.kind is ActionKind.RELINK and a.dst:
                r.links.setdefault(a.dst, []).append(a.source)
        try:
            if resume:
                r.finish_relinks(records)
            # Copies first: they are what needs room in the store. A disk that fills stops the run
            # there, before any source has left its place (a rename) and before the YAML changes.
            todo = sorted((a for a in plan.actions if a.method is not Method.NONE),
                          key=lambda a: a.method is not Method.COPY)
            for a in todo:
                if r.stopped is not None:
                    break
                r.place(a)
            yaml_ok = r.stopped is None or r.renamed     # a renamed source is found through the YAML only
            if yaml_ok:
                r.make_store_folders()
            if plan.yaml_path is not None and plan.yaml_changes and yaml_ok:
                try:
                    r.write_yaml()
                except OSError as exc:
                    # Models are in the target, sources untouched: stop before removing any source.
                    yaml_ok = False
                    report.problems.append(Problem(plan.yaml_path, f"cannot write the YAML ({fsops.describe(exc)}); "
                                                   "no source was removed"))
                    j.append(Fail(0, f"yaml: {exc.strerror}"))
                    r.note_full(exc)
            if yaml_ok:
                r.set_sources_aside()
            if r.stopped is not None:
                stop(j, report, r.stopped, r.renamed)
            stayed = tuple([a.source, a.size, a.mtime_ns, a.digest] for a in plan.actions
                           if a.kind is ActionKind.CONFLICT and a.digest)
            if stayed:      # conflicts left in place, as read: attach, which reads no file, compares by them
                j.append(Stayed(stayed))
            if plan.names_after:
                # What ComfyUI loads for each name it loaded before the run (verify checks it).
                j.append(Names(tuple(list(n) for n in plan.names_after)))
            if before_close is not None:
                before_close(report.run_id)
            j.append(Close("complete" if report.ok else "problems", report.placed, report.copied_bytes,
                           report.removed, report.quarantine_bytes, len(report.problems)))
        finally:
            j.close()
    return report


def _open_log(plan: Plan, sd: str, header: dict, times: Dict[str, int],
              resume: Optional[str]) -> Tuple[Journal, RunReport, List[Record]]:
    """The run's log: an interrupted run's (`resume`) reopened and continued (a resume record, the
    times of the folders it touches first, its half-copied temporaries removed), else a new one
    (its header, the folders' times). Returns it, the run's report and the records it held before."""
    records: List[Record] = []
    if resume:
        records = load_log(resume)
        head = records[0]
        assert isinstance(head, Header)
        if sorted(head.sources) != sorted(plan.sources) or head.yaml != plan.yaml_path:
            raise BadInput(f"an interrupted run ({head.run}) of other sources or another YAML is "
                           "pending in this target",
                           f"finish it by running with its options, or `comfy-migrate rollback {head.run}`")
        j, records, torn = Journal.reopen(resume)
        run_id = head.run
        report = RunReport(run_id, resume, resumed=True)
        j.append(Resume(**header, torn_tail_dropped=torn))
        known = {d for r in records if isinstance(r, DirTimes) for d in r.dirs}
        if set(times) - known:     # folders this continued run touches first: their times now
            j.append(DirTimes({d: t for d, t in times.items() if d not in known}))
        _clean_temps(j, records)
    else:
        run_id = new_run_id()
        path = os.path.join(sd, RUNS_DIR, f"{run_id}.jsonl")
        j = Journal.create(path, Header(run=run_id, **header))
        j.append(DirTimes(times))
        report = RunReport(run_id, path)
    return j, report, records


def stop(j: Journal, report: RunReport, exc: OSError, renamed: bool) -> None:
    """End a run the disk stopped: a `stopped` record and no closing one, so the log stays open: `run`
    continues this run (same id, same log) and one `rollback` undoes all of it. Until then ComfyUI
    loads every name as before: a failed copy's source never moved, and the YAML is switched only
    when a source already left its place by a rename (then the YAML is what finds it)."""
    try:
        j.append(Stopped(fsops.describe(exc), report.placed, report.yaml_written))
    except NoSpace:
        pass        # not even that fits: the log ends with the failed step, which says the same
    where = report.problems[-1].path if report.problems else (exc.filename or "the store")
    names = ("every model name loads what it loaded before" if report.yaml_written or not renamed else
             "a model renamed into the store before it is found again once the run is continued")
    raise NoSpace(f"the disk filled up during run {report.run_id} ({exc.strerror or exc}, at {where}): "
                  f"it stopped there; {names}", AGAIN)


def fs_record(plan: Plan) -> Dict[str, dict]:
    """Per root, what its probe found that later checks depend on (identity.precision_of reads it):
    rollback compares each file with what the run observed at the precision its filesystem keeps."""
    doc = fsops.fs_doc
    out = {p.source: doc(p.fs) for p in plan.probes}
    out[plan.target] = doc(plan.target_fs)
    return out


def remember_facts(plan: Plan) -> None:
    """Keep the weakest facts probes of the store's filesystem found (its own probe, and a source's
    on the same filesystem) in its state folder: every later plan and rollback starts from them."""
    try:
        dev = os.stat(plan.target).st_dev
    except OSError:
        return
    docs = [fsops.fs_doc(plan.target_fs)]
    for p in plan.probes:
        try:
            if os.stat(p.source).st_dev == dev:
                docs.append(fsops.fs_doc(p.fs))
        except OSError:
            continue
    for d in docs:
        try:
            fsops.remember_weakest(plan.target, d)
        except OSError:
            pass        # a belief kept for later plans: the run's own header records this run's facts


def links_on_way(plan: Plan) -> Dict[str, str]:
    """Every symlink to a folder on the way from the target to a destination, with its text, as it
    is before the first step: the store folders this run writes through (see preflight.py)."""
    from migrate.core.preflight import needed_folders
    out: Dict[str, str] = {}
    for folder in needed_folders(plan):
        cur = plan.target
        for part in ([] if folder == plan.target else os.path.relpath(folder, plan.target).split("/")):
            cur = os.path.join(cur, part)
            if cur in out:
                continue
            try:
                if not os.path.islink(cur):
                    if not os.path.isdir(cur):
                        break
                    continue
                out[cur] = os.readlink(cur)
            except OSError:
                break
    return out


def dir_times(plan: Plan) -> Dict[str, int]:
    """mtime_ns of every existing folder the run may change (a source's folder, the nearest existing
    folder of each destination, the roots, the YAML's folder), journalled before the first step so
    that rollback can give them back: "as it was" includes the folders' times."""
    roots = [plan.target, *plan.sources]
    dirs = set(roots)
    for a in plan.actions:
        if a.method is Method.NONE and a.removal is Removal.NONE and a.kind is not ActionKind.RELINK:
            continue
        if a.removal is not Removal.NONE or a.link_back or a.kind is ActionKind.RELINK:
            dirs.add(os.path.dirname(a.source))     # (a source that stays leaves its folder alone: on an
        if a.dst:                                   # overlay, setting its time would copy the folder up)
            dirs.add(fsops.nearest_existing(os.path.dirname(a.dst)))
    yaml_dirs = set()
    if plan.yaml_path is not None and plan.yaml_changes:
        yaml_dirs.add(os.path.dirname(plan.yaml_path))
        real = yaml_behind(plan)
        if real is not None:        # written through the link: the folder behind it changes
            yaml_dirs.add(os.path.dirname(real))
    dirs |= yaml_dirs
    out = {}
    for d in sorted(dirs):
        inside = any(d == r or d.startswith(r.rstrip("/") + "/") for r in roots)
        if not inside and d not in yaml_dirs:
            continue
        try:
            st = os.stat(d)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            out[d] = st.st_mtime_ns
    return out


def yaml_behind(plan: Plan) -> Optional[str]:
    """The file a symlinked extra_model_paths.yaml leads to (run writes through the link), or None
    when the YAML is no symlink or the run leaves it alone."""
    if plan.yaml_path is None or not plan.yaml_changes:
        return None
    real = fsops.through_link(plan.yaml_path)
    return real if real != plan.yaml_path else None


def _clean_temps(j: Journal, records: List[Record]) -> None:
    """Remove half-copied temporary files of the interrupted steps (journalled)."""
    steps = group_steps(records)
    for b in steps.begins:
        if b.op in STAGES_TEMP and b.step not in steps.done and b.step not in steps.failed:
            if b.tmp is not None and os.path.lexists(b.tmp):
                j.append(Cleanup(b.tmp, b.step))
                fsops.remove(b.tmp)
