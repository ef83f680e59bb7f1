"""`rollback`: undo a run from its log (default: this pod's newest not rolled back), a request in,
an Outcome out.

What the undo needs is one value, a RollbackPlan (the run's log and records, its undos, what other
runs rely on, what rollbacks kept for this run and may now hand back, the folders left to remove),
made under the lock and run by `.execute()` (rollback.execute_rollback).
"""
from __future__ import annotations

import contextlib
import os
import shlex
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from migrate.disk import fsops

from migrate.app.common import Io, Outcome, clear_stale_lock, find_run_logs, take_lock
from migrate.core.errors import BadInput, BadLog, ExitCode, MigrateError
from migrate.core.model import show
from migrate.core.records import Record


@dataclass(frozen=True)
class RollbackRequest:
    """run_ref: a run id or log path (None: this pod's newest run not rolled back, found by comfyui or
    yaml_path); dry_run: show what would be undone; yes: do not ask; wait: seconds for the lock."""
    run_ref: Optional[str] = None
    target: Optional[str] = None
    comfyui: Optional[str] = None
    yaml_path: Optional[str] = None
    dry_run: bool = False
    yes: bool = False
    wait: float = 900


@dataclass(frozen=True)
class RollbackPlan:
    """Everything the undo of one run needs: its log and records, the undos (rollback.plan_rollback,
    newest first), relied (store path -> the other runs that rely on it: fleet.reliance), shared (other
    live runs use the store), handed (kept files this run may take back: fleet.droppable), and the
    store folders the rolled-back runs made (runlog.left_folders)."""
    log: str
    records: List[Record]
    undos: list
    relied: Dict[str, List[str]] = field(default_factory=dict)
    shared: bool = False
    handed: list = field(default_factory=list)
    left_folders: Sequence[str] = ()

    @property
    def run_id(self) -> str:
        return self.records[0].run

    def execute(self, on_bytes: Optional[Callable[[int], None]] = None,
                before_close: Optional[Callable[[], None]] = None):
        """Undo it, journalled in <run>.rollback.jsonl: rollback.RollbackReport."""
        from migrate.app.rollback import execute_rollback
        return execute_rollback(self.log, self.records, self.undos, on_bytes, self.relied, shared=self.shared,
                                handed=self.handed, before_close=before_close, left_folders=self.left_folders)


@dataclass(frozen=True)
class RollbackOutcome(Outcome):
    """state: 'nothing' (every run of this pod is rolled back already: message), 'dry_run' (plan's
    undos; doomed: step -> why its source cannot be recreated; users: step -> the runs relying on the
    stored file it would remove, fleet.reliance) or 'done' (report: rollback.RollbackReport)."""
    state: str = "done"
    message: str = ""
    target: str = ""
    plan: Optional[RollbackPlan] = None
    doomed: Dict[int, str] = field(default_factory=dict)
    users: Dict[int, Optional[List[str]]] = field(default_factory=dict)
    report: object = None

    command = "rollback"


@dataclass(frozen=True)
class RollbackPreview:
    """What `rollback` shows before it asks: the run, its undos, how many stored files stay for others."""
    plan: RollbackPlan
    kept: int


def rollback(req: RollbackRequest, io: Io) -> RollbackOutcome:
    """Undo a run (`comfy-migrate rollback`): find its log, check it still applies here, show what
    would be undone (dry run: only that), ask, and undo it under the target's lock."""
    from migrate.app.pod import resolve_target
    from migrate.core.fleet import reliance
    from migrate.app.rollback import foresee, plan_rollback, settled, store_facts, users_of
    from migrate.disk.runlog import NothingToRollBack, live_runs, load_run
    if not req.dry_run:
        sweep_probe_leftovers(resolve_target(req.target), req.comfyui)
    target = resolve_target(req.target)
    try:
        (log,) = find_run_logs(io, target, req.run_ref, req.comfyui, live=True, yaml=req.yaml_path,
                               none_here="no run to roll back in")
    except NothingToRollBack as exc:
        clear_stale_lock(io, target)
        return RollbackOutcome(ExitCode.OK, "nothing", str(exc), target)
    except BadLog:      # no run to undo (e.g. one killed writing its first record): still no stale lock left
        # (no store at all, require_store's refusal: no state folder, so there is no lock to clear)
        clear_stale_lock(io, target)
        raise
    records = load_run(log)
    check_applies(records, log, target)
    fs_now, seen = store_facts(target, records)
    plan = RollbackPlan(log, records, plan_rollback(records, seen))
    rid = plan.run_id
    if req.dry_run or not req.yes:
        relied = reliance(settled(live_runs(target), target), rid)     # shown now, decided under the lock
        users = {u.step: users_of(u, relied, records[0].target) for u in plan.undos}
        if req.dry_run:
            doomed = foresee(plan.undos)
            return RollbackOutcome(ExitCode.PROBLEMS if doomed else ExitCode.OK, "dry_run", "", target, plan, doomed,
                                   users)
        io.show(RollbackPreview(plan, sum(1 for v in users.values() if v)))
        io.confirm(f"Undo run {rid}?")
    with take_lock(io, target, "comfy-migrate rollback", req.wait, room=True):
        try:
            fsops.remember_weakest(target, fs_now)
        except OSError:
            pass        # a belief for later plans; this rollback uses it already
        plan = under_lock(plan, target)

        def catalogue() -> None:
            from migrate.disk import catalogue as store_catalogue
            try:
                store_catalogue.refresh(target, {}, {})
            except OSError as exc:
                io.warn(f"could not update the store's catalogue ({fsops.describe(exc)})")
        from migrate.app.pod import kept_reads
        with io.progress("restoring") as (_, on_bytes), interrupted_rollback(rid, target), kept_reads():
            rep = plan.execute(on_bytes, before_close=catalogue)
    code = ExitCode.PROBLEMS if rep.skipped or rep.stranded else ExitCode.OK
    return RollbackOutcome(code, "done", "", target, plan, report=rep)


def under_lock(plan: RollbackPlan, target: str) -> RollbackPlan:
    """The plan with what other runs rely on decided now, under the lock (the live runs as they are)."""
    import dataclasses
    from migrate.core.fleet import droppable, reliance
    from migrate.app.rollback import settle, settled
    from migrate.disk.runlog import kept_records, left_folders, live_runs
    live = settled(live_runs(target), target)
    return dataclasses.replace(plan, relied=reliance(live, plan.run_id),
                               shared=any(rid != plan.run_id for rid, _ in live),
                               handed=droppable(kept_records(target), settle(plan.records, target), live),
                               left_folders=left_folders(target, plan.run_id))


def check_applies(records: List[dict], log: str, target: str) -> None:
    """Refuse a run whose log does not apply here: made with the volume mounted elsewhere, made on
    another host whose sources are not here, or one newer runs of this pod build on."""
    home = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(log))))   # <target>/.comfy-migrate/runs
    head = records[0]
    if os.path.realpath(head.target) != os.path.realpath(home):
        raise BadInput(f"run {head.run} was made with the target at {head.target}, its log is "
                       f"now in {home} (the volume is mounted elsewhere): the log's paths do not apply here",
                       f"roll back where the volume is mounted as it was ({head.target})")
    if head.host != os.uname().nodename and not all(os.path.isdir(d) for d in head.sources):
        raise BadInput(f"run {head.run} was made on host {head.host} and its sources are not here",
                       "roll it back on that pod (its sources and YAML live there)")
    from migrate.disk.runlog import live_runs
    newer = newer_pod_runs(records, live_runs(target), target)
    if newer:
        raise BadInput(f"run {head.run} wrote the YAML's comfy-migrate section, and newer run(s) of this pod not "
                       f"rolled back build on it: {', '.join(newer)}",
                       "roll back the newest first: " + ", then ".join(
                           f"comfy-migrate rollback {rid} --target {shlex.quote(show(target))}"
                           for rid in list(reversed(newer)) + [head.run]))


def newer_pod_runs(records, live, target: str):
    """The live runs of the same pod (its YAML) newer than this run, when this run wrote the YAML:
    their YAML changes were made on top of its section, and their names resolve through it."""
    from migrate.core.records import group_steps
    from migrate.core.steps import Op
    from migrate.app.verify import pod_runs
    head = records[0]
    steps = group_steps(records)
    if not head.yaml or not any(b.op is Op.YAML and b.step in steps.done for b in steps.begins):
        return []
    # This run is among the live ones, so pod_runs matches by the YAML (never its fallbacks).
    mine, _ = pod_runs(live, target, head.yaml, "")
    if not any(rid == head.run for rid, _ in mine):
        return []
    # Another install whose YAML is a symlink to the same file (another pod) resolves through this
    # section as well: its newer runs count too.
    real = os.path.realpath(head.yaml)
    shared = [rid for rid, rec in live if isinstance(rec[0].yaml, str) and os.path.realpath(rec[0].yaml) == real]
    return sorted({rid for rid, _ in mine if rid > head.run} | {rid for rid in shared if rid > head.run})


def sweep_probe_leftovers(target: str, comfyui) -> None:
    """Scratch files and folders of a probe killed mid-way (a plan's or a run's, before any log):
    in the store (or the folder it would be made in) and in this pod's models folder, found by
    their name and removed, the folder's mtime put back (fsops.sweep_probes), and every folder a
    probe on this machine noted before it was killed (fsops.sweep_probe_notes)."""
    from migrate.disk.facts import find_comfyui
    folders = [fsops.nearest_existing(target)]
    try:
        folders.append(os.path.join(find_comfyui(comfyui), "models"))
    except MigrateError:
        pass
    for f in folders:
        fsops.sweep_probes(f)
    fsops.sweep_probe_notes()       # a pod's, found without --comfyui; folder times a kill left changed


@contextlib.contextmanager
def interrupted_rollback(rid: str, target: str):
    """Ctrl-C during a rollback: the same command again finishes it."""
    from migrate.core.errors import Interrupted
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"the rollback of run {rid} stopped part-way (its steps are logged)",
                          f"`comfy-migrate rollback {rid} --target {shlex.quote(show(target))} --yes` "
                          "again finishes it") from None
