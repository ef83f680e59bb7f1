"""`migrate` (the `run` command) and `plan_pod` (what `plan` and `run --dry-run` show): a request
in, an Outcome out.

The run's shape: plan (outside the lock: the question must not hold up other pods), show the
summary, ask, then take the lock and plan again against the store as it is now (no byte read twice:
the digests just gathered are the cache); a plan that changed in a way that matters is shown and
asked again; then execute it and refresh the store's catalogue before the log closes. The
shell writes the run's HTML page beside its log (a view).
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from migrate.disk import fsops
from migrate.app.common import Io, Outcome, clear_stale_lock, given, take_lock
from migrate.core.errors import BadInput, ExitCode, MigrateError
from migrate.core.model import show


@dataclass(frozen=True)
class PlanRequest:
    """What the user asked a plan of: the pod (comfyui, sources, yaml_path, comfyui_args), the store
    (target) and the policy (mode, on_conflict, link_back, base_path, include_suspect), as the options
    of `plan` and `run` give them (docs/reference.md). price: USD per GB-month, for the report page."""
    comfyui: Optional[str] = None
    sources: Tuple[str, ...] = ()
    target: Optional[str] = None
    yaml_path: Optional[str] = None
    mode: str = "move"
    on_conflict: str = "skip"
    link_back: Optional[bool] = None
    base_path: Optional[str] = None
    no_cache: bool = False
    include_suspect: bool = False
    source_is_models: bool = False
    comfyui_args: Optional[Tuple[str, str]] = None      # (the text, where it came from)
    price: float = 0.07

    def given(self, target: Optional[str] = None) -> str:
        """' --comfyui C ... --target T': the options a printed command needs to act on this pod."""
        return given(self.comfyui, self.sources, self.yaml_path,
                     target or (os.path.abspath(self.target) if self.target else None))


@dataclass(frozen=True)
class MigrateRequest(PlanRequest):
    """`run`: a PlanRequest, and dry_run (show the plan, change nothing), yes (do not ask),
    while_running (ComfyUI may be running), wait (seconds for another run's lock), argv (logged)."""
    dry_run: bool = False
    yes: bool = False
    while_running: bool = False
    wait: float = 900
    argv: Tuple[str, ...] = ()


@dataclass(frozen=True)
class MigrateOutcome(Outcome):
    """state: 'dry_run' (plan: exactly what a run executes; exit 4 when it does not fit),
    'nothing_to_do', or 'done' (report: execute.RunReport). stayed: (path, why) of each model file
    left where it is (exit 1 says so); running: ComfyUI processes that still read the old YAML;
    page: the run's HTML report, once the shell wrote it."""
    state: str = "done"
    plan: object = None
    facts: object = None
    report: object = None
    stayed: List[Tuple[str, str]] = field(default_factory=list)
    running: list = field(default_factory=list)
    page: Optional[str] = None

    command = "migrate"


def plan_pod(req: PlanRequest, io: Io, cache=None, again: bool = False):
    """(facts, plan): gather the facts and make the plan. `again`: a re-plan (under the lock) whose
    warnings were already shown once."""
    from migrate.app import pod
    from migrate.disk.facts import gather, make_plan
    from migrate.core.model import Mode, OnConflict, Policy
    home, roots, launch = pod.resolve_pod(req.comfyui, req.sources, None if again else io,
                                                 req.source_is_models, req.comfyui_args)
    if home is not None and not req.sources:
        from migrate.core.comfy import models_of_another_install
        models = launch.models if launch is not None else os.path.join(home, "models")
        owner = models_of_another_install(home, models)
        if owner is not None:
            raise BadInput(f"{models} is a symlink to {os.path.realpath(models)}, "
                           f"the models folder of another ComfyUI install ({owner}): migrating it would empty that "
                           "install's models folder under it", f"migrate that install itself (--comfyui {owner}), "
                           "and give this one its YAML: `comfy-migrate plan` for it then has nothing to move")
    target = pod.resolve_target(req.target)
    yaml_path = req.yaml_path
    if yaml_path is not None and not again:
        check_yaml_is_read(home, os.path.abspath(yaml_path), launch)
    if yaml_path is None and home is not None:
        yaml_path = os.path.join(home, "extra_model_paths.yaml")
    yaml_path = os.path.abspath(yaml_path) if yaml_path else None
    cache = cache if cache is not None else pod.open_cache(req.no_cache)
    with io.progress("hashing") as (on_total, on_bytes):
        facts = gather(roots, target, yaml_path, cache, on_total, on_bytes, pod.open_verdicts(req.no_cache),
                       req.include_suspect, launch.models if launch else None, launch,
                       copy_reads=isinstance(req, MigrateRequest) and not req.dry_run)
    for s in (() if again else facts.sources):
        for p in s.problems:
            io.warn(f"{show(p.path)}: {p.message}")
    if facts.catalogue_warning and not again:
        io.warn(facts.catalogue_warning)
    if facts.target_scan is not None:
        ts = facts.target_scan
        io.debug(f"store: {len(ts.records)} entries, {facts.catalogue_hits} digests from its catalogue, "
                 f"{ts.cached_files} from the cache, {ts.hashed_files} files read ({ts.hashed_bytes} bytes)")
    if not again:
        from migrate.disk.hashing import extras, hashes_on
        known = {r.digest for sc in [*facts.sources, facts.target_scan] if sc is not None for r in sc.records if r.digest}
        lack = sum(1 for d in known if extras(d) is None)
        if lack and hashes_on():
            io.debug(f"{lack} of {len(known)} distinct contents have xxh3 only so far (read before SHA-256/BLAKE3 "
                     "were computed, with --hashes xxh3, or left to this run's copy, which reads them anyway): "
                     "each gets them the next time its bytes are read")
    policy = Policy(mode=Mode(req.mode), on_conflict=OnConflict(req.on_conflict), link_back=req.link_back,
                    base_path=req.base_path)
    return facts, make_plan(facts, policy)


def check_yaml_is_read(home, yaml_path: str, launch=None) -> None:
    """--yaml must name a file ComfyUI reads: the extra_model_paths.yaml next to its main.py (through
    symlinks: the same file), or one its launch options load (--extra-model-paths-config). Written
    elsewhere, the run would take every model out of the pod and ComfyUI would find none of them.
    (A missing folder is the preflight's to name.)"""
    if not os.path.isdir(os.path.dirname(yaml_path)):
        return
    if launch is not None and os.path.realpath(yaml_path) in {os.path.realpath(p) for p in launch.configs}:
        return
    folder = home if home is not None else os.path.dirname(yaml_path)
    read = os.path.join(folder, "extra_model_paths.yaml")
    if os.path.realpath(yaml_path) == os.path.realpath(read) and (
            home is not None or os.path.isfile(os.path.join(folder, "main.py"))):
        return
    if home is None:
        raise BadInput(f"--yaml {yaml_path}: ComfyUI reads the extra_model_paths.yaml next to its main.py, and "
                       f"{os.path.dirname(yaml_path)} holds no main.py: a YAML written there would not be read, "
                       "and the moved models would be lost to ComfyUI",
                       "pass --comfyui DIR (the folder of main.py) instead of --yaml, or --yaml DIR/extra_model_paths.yaml")
    raise BadInput(f"--yaml {yaml_path}: the ComfyUI in {home} reads {read}, not this file: written there, the "
                   "moved models would be lost to ComfyUI", f"leave out --yaml (it defaults to {read}); if ComfyUI is "
                   f"started with --extra-model-paths-config {yaml_path}, pass --comfyui-args "
                   f"{shlex.quote('--extra-model-paths-config ' + yaml_path)}")


def unfit_code(plan) -> int:
    """A plan that does not fit ends `plan` and `run --dry-run` with exit 4, as `run` would refuse it."""
    return ExitCode.OK if plan.fits and plan.container_fits else ExitCode.NO_SPACE


def migrate(req: MigrateRequest, io: Io) -> MigrateOutcome:
    """Execute the plan of `req`'s pod (`comfy-migrate run`); see the module's docstring."""
    from migrate.core.preflight import StoreChanged
    from migrate.disk.runlog import find_interrupted
    try:
        facts, plan = plan_pod(req, io)
    except StoreChanged:
        if req.dry_run:
            raise
        # A file appeared in the store where this plan places one, after its scan: another pod's
        # run placing it (torture fleet-0040). Wait for that run, then plan against its result.
        from migrate.app.pod import resolve_target
        take_lock(io, resolve_target(req.target), "comfy-migrate run (waiting to plan)", req.wait).release()
        facts, plan = plan_pod(req, io)
    if req.dry_run:
        return MigrateOutcome(unfit_code(plan), "dry_run", plan, facts)
    if not plan.has_work and find_interrupted(plan.target, plan.sources, plan.yaml_path) is None:
        clear_stale_lock(io, plan.target)
        return nothing_to_do(plan, facts)
    running = running_comfyui(req.comfyui, plan.yaml_path, req.while_running, plan.launch)
    io.show(plan)
    # Ask before taking the lock: a question must not hold up the other pods.
    if not req.yes:
        io.confirm(f"Migrate into {plan.target}?")
    got = _run_locked(req, io, facts, plan)
    if got[0] is None:
        return nothing_to_do(got[1], got[2])
    rep, plan, facts = got
    left = stayed_behind(plan, facts)
    return MigrateOutcome(ExitCode.PROBLEMS if rep.problems or left else ExitCode.OK, "done", plan, facts, rep, left,
                          running)


def _run_locked(req: MigrateRequest, io: Io, facts, plan):
    """Under the lock: plan again, ask again if that plan differs in a way that matters, execute.
    (RunReport, plan, facts), or (None, plan, facts) when there is nothing to do after all."""
    from migrate.disk import catalogue as store_catalogue
    from migrate.app.execute import execute_plan
    from migrate.disk.facts import confirm_beliefs
    from migrate.core.fleet import plan_changes
    from migrate.disk.runlog import find_interrupted
    from migrate.app.pod import open_cache
    confirmed = plan
    while True:
        lock = take_lock(io, plan.target, "comfy-migrate run", req.wait)
        try:
            # The plan that runs is made under the lock, against the store as it is now.
            memo = memo_cache(facts)
            facts, plan = plan_pod(req, io, cache=memo, again=True)
            stale = confirm_beliefs(plan, (memo, open_cache(req.no_cache)))
            if stale:
                for p in stale:
                    io.warn(f"{show(p)}: its bytes are not those its cached digest says (rewritten with "
                            "its times kept, or a reused inode); planned again with what it holds now")
                facts, plan = plan_pod(req, io, cache=memo, again=True)
            matters, notes = plan_changes(confirmed, plan)
            if matters and not req.yes:
                lock.release()
                io.warn("the pod or the store changed since the plan (another pod's run, or files changed "
                        "meanwhile); the plan is now different:")
                for m in matters:
                    io.warn(f"  {show(m)}")
                io.show(plan)
                io.confirm(f"Migrate into {plan.target} with this new plan?")
                confirmed = plan
                continue
            for m in matters:
                io.warn(f"changed since the plan: {show(m)}")
            for n in notes:
                io.info(f"note: {n}")
            if not plan.has_work and find_interrupted(plan.target, plan.sources, plan.yaml_path) is None:
                return None, plan, facts

            def catalogue(run_id: str) -> None:      # before the log closes: part of finishing the run
                try:
                    _, cat_warning = store_catalogue.refresh(
                        plan.target, *store_catalogue.known_from(plan.target, facts.target_scan, plan.actions, run_id))
                    if cat_warning:
                        io.debug(cat_warning)
                except OSError as exc:
                    io.warn(f"could not update the store's catalogue ({fsops.describe(exc)}); the next plan hashes instead")
            try:
                with io.progress("copying") as (on_total, on_bytes):
                    on_total(plan.bytes_to_copy)
                    rep = execute_plan(plan, list(req.argv), on_bytes, lock=lock, before_close=catalogue)
            except KeyboardInterrupt:
                raise run_interrupted(plan, req) from None
        finally:
            lock.release()
        return rep, plan, facts


def nothing_to_do(plan, facts) -> MigrateOutcome:
    """A run with nothing to do: exit 1 if files stayed behind."""
    left = stayed_behind(plan, facts)
    return MigrateOutcome(ExitCode.PROBLEMS if left else ExitCode.OK, "nothing_to_do", plan, facts, stayed=left)


def memo_cache(facts):
    """The digests just gathered, as a cache for the re-plan under the lock (no byte read twice)."""
    from migrate.disk.hashing import DigestCache
    memo = DigestCache(None)
    for scan in facts.sources + ((facts.target_scan,) if facts.target_scan is not None else ()):
        for r in scan.records:
            if r.digest:
                memo.put(r.stamp, r.digest, facts.started_ns)
    return memo


def stayed_behind(plan, facts) -> list:
    """(path, why) of each model file the run left where it is: a conflict, a name the store cannot
    hold or one that folds onto another there (storerules.stay_kind), a file the audit held back, an unreadable file or one that changed while scanned, a name that is not UTF-8, a model
    file in no category folder. Exit 1 says so (README: exit codes)."""
    from migrate.core.comfy import MODEL_EXTENSIONS
    from migrate.core.model import ActionKind, Status
    why = {Status.SUSPECT: "held-back", Status.UNREADABLE: "unreadable", Status.CHANGED: "changed",
           Status.BAD_NAME: "bad-name"}
    from migrate.core.storerules import stay_kind
    left = {a.source: stay_kind(a) for a in plan.actions if a.kind is ActionKind.CONFLICT}
    for s in facts.sources:
        for r in s.records:
            if r.status in why:
                left.setdefault(r.path, why[r.status])
            elif r.status is Status.UNCATEGORISED and os.path.splitext(r.rel)[1].lower() in MODEL_EXTENSIONS:
                left.setdefault(r.path, "uncategorised")      # a model file directly under models/
        for p in s.problems:            # an unreadable file is a record and a problem: said once
            left.setdefault(p.path, "unreadable")
    return list(left.items())


def run_interrupted(plan, req: PlanRequest):
    """Ctrl-C during a run: whether it changed anything, and the two commands that finish or undo it."""
    from migrate.core.errors import Interrupted
    from migrate.disk.runlog import find_interrupted, finished_here
    log = find_interrupted(plan.target, plan.sources, plan.yaml_path)
    if log is None:
        done = finished_here(plan.target)
        if done:
            return Interrupted(f"run {done} had finished when interrupted (its log is closed)",
                               f"`comfy-migrate verify{given(req.comfyui, (), None, plan.target)}` checks it")
        return Interrupted("the run stopped before its first step; nothing was changed")
    rid = os.path.basename(log)[:-len(".jsonl")]
    return Interrupted(f"run {rid} stopped part-way (every step it took is in its log, nothing is lost)",
                       f"`comfy-migrate run{req.given(plan.target)}` continues it, "
                       f"`comfy-migrate rollback {rid} --target {shlex.quote(show(plan.target))}` undoes it")


def running_comfyui(comfyui, yaml_path, allowed: bool, launch=None):
    """The ComfyUI processes running from this pod's ComfyUI folder; refuses (exit 3) while one
    runs unless `allowed`: it would keep serving the old folders until restarted. The refusal says
    which options to pass once it is stopped (then /proc no longer shows them)."""
    from migrate.disk.facts import find_comfyui
    from migrate.disk.running import find_running
    try:
        home = find_comfyui(comfyui)
    except MigrateError:
        home = os.path.dirname(yaml_path) if yaml_path else None
    running = find_running(home) if home else []
    if running and not allowed:
        again = ""
        if launch is not None and launch.args:
            again = (f"; once it is stopped, pass its options: comfy-migrate run --comfyui {shlex.quote(home)} "
                     f"--comfyui-args {shlex.quote(launch.shell_args())}")
        raise BadInput(f"ComfyUI is running from {home} ({'; '.join(r.describe() for r in running)}) and reads "
                       "extra_model_paths.yaml only at start-up",
                       "stop it, run again, then start it" + again + "; or pass --while-running and restart it afterwards")
    return running
