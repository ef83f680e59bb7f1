"""`attach`: point a ComfyUI at an existing store (its YAML section, the store's missing category
folders); moves and reads no model file. A request in, an Outcome out; journalled like a run."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Tuple

from migrate.app.common import Io, Outcome, take_lock
from migrate.core.errors import BadInput, ExitCode
from migrate.core.model import show


@dataclass(frozen=True)
class AttachRequest:
    """comfyui: the ComfyUI folder; target: the store; base_path: the YAML's base_path form; dry_run:
    show what would change; yes: do not ask; wait: seconds for the lock; comfyui_args: (text, where
    it came from); argv: the command line, logged."""
    comfyui: Optional[str] = None
    target: Optional[str] = None
    base_path: Optional[str] = None
    dry_run: bool = False
    yes: bool = False
    wait: float = 900
    comfyui_args: Optional[Tuple[str, str]] = None
    argv: Tuple[str, ...] = ()


@dataclass(frozen=True)
class AttachOutcome(Outcome):
    """state: 'attached' (already: nothing written), 'dry_run' or 'done' (report: execute.RunReport, or
    None when the plan made under the lock had nothing left to do). shown: attach's Plan as shown
    before asking (the YAML diff, the store folders, the name changes); plan: the one that ran;
    not_compared: name changes it could not compare; running: ComfyUI processes to restart."""
    state: str = "done"
    home: str = ""
    target: str = ""
    shown: object = None
    plan: object = None
    not_compared: tuple = ()
    dry_run: bool = False
    report: object = None
    running: list = field(default_factory=list)

    command = "attach"


def attach(req: AttachRequest, io: Io) -> AttachOutcome:
    """Point the pod's ComfyUI at the store (`comfy-migrate attach`)."""
    import dataclasses

    from migrate.app.pod import adopt_comfyui, resolve_launch, resolve_target
    from migrate.app.attach import gather_attach, plan_attach
    from migrate.core.comfy import find_comfyui
    home = find_comfyui(req.comfyui)
    adopt_comfyui(home, io)
    target = resolve_target(req.target)
    if not os.path.isdir(target):
        raise BadInput(f"no store at {target}: attach points ComfyUI at a store that exists",
                       "pass the store's folder as --target, or migrate first with `comfy-migrate run`")
    launch = resolve_launch(home, req.comfyui_args, io)

    def planned():
        facts = gather_attach(home, target, req.base_path, launch)
        got = plan_attach(facts)
        return facts, dataclasses.replace(got, plan=got.plan._replace(launch=launch))     # logged, as by run

    facts, got = planned()
    plan = got.plan
    for p in (p for s in (facts.models, facts.store) for p in s.problems):
        io.warn(f"{show(p.path)}: {p.message}")
    first = AttachOutcome(ExitCode.OK, "attached" if not plan.has_work else "dry_run", home, target, plan, plan,
                          tuple(got.not_compared), req.dry_run)
    if not plan.has_work and pending_attach(target, plan) is None:
        return first
    io.show(first)
    if req.dry_run:
        return first
    if not req.yes:
        io.confirm(f"Point {home} at {target}?")
    from migrate.app.execute import execute_plan      # only with work to do: start-up
    from migrate.disk.runlog import find_interrupted
    with take_lock(io, target, "comfy-migrate attach", req.wait) as lock:
        facts, got = planned()          # again under the lock: the store as it is now
        plan = got.plan
        pending = find_interrupted(target, plan.sources, plan.yaml_path)
        if pending is not None and pending != pending_attach(target, plan):
            raise BadInput(f"an interrupted run of {plan.yaml_path} is pending in {target}",
                           "finish it with `comfy-migrate run` (same options), or roll it back first")
        rep = None
        if plan.has_work or pending is not None:     # an interrupted attach: this one continues its log
            try:
                rep = execute_plan(plan, list(req.argv), lock=lock, kind="attach")
            except KeyboardInterrupt:
                raise attach_interrupted(home, target, plan) from None
    running = []
    try:
        from migrate.disk.running import find_running
        running = find_running(home)
    except OSError:
        pass
    code = ExitCode.PROBLEMS if rep is not None and rep.problems else ExitCode.OK
    return AttachOutcome(code, "done", home, target, first.shown, plan, first.not_compared, req.dry_run, rep, running)


def pending_attach(target: str, plan) -> Optional[str]:
    """The log of an attach of this YAML that was interrupted (Ctrl-C, a kill): the next attach
    continues it (as a run continues a run), rather than refusing and naming `run`."""
    from migrate.core.errors import BadLog
    from migrate.disk.journal import load_log
    from migrate.disk.runlog import find_interrupted
    try:
        path = find_interrupted(target, plan.sources, plan.yaml_path)
        return path if path is not None and getattr(load_log(path)[0], "kind", None) == "attach" else None
    except BadLog:      # a damaged log: an attach with nothing to write still says "attached already"
        return None


def attach_interrupted(home: str, target: str, plan):
    """Ctrl-C during an attach: what it left, and the commands that finish or undo it."""
    import shlex

    from migrate.core.errors import Interrupted
    from migrate.disk.runlog import finished_here
    log = pending_attach(target, plan)
    if log is None:
        done = finished_here(target)
        if done:
            return Interrupted(f"attach {done} had finished when interrupted (its log is closed)",
                               f"`comfy-migrate verify --comfyui {shlex.quote(show(home))}` checks it")
        return Interrupted("the attach stopped before its first step; nothing was changed")
    rid = os.path.basename(log)[:-len(".jsonl")]
    t = shlex.quote(show(target))
    return Interrupted(f"attach {rid} stopped part-way (every step it took is in its log)",
                       f"`comfy-migrate attach --comfyui {shlex.quote(show(home))} --target {t} --yes` again "
                       f"finishes it, `comfy-migrate rollback {rid} --target {t}` undoes it")
