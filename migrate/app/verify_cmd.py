"""`verify`: re-hash (or, quick, re-stat) every model this pod's runs took out of its sources and
check ComfyUI finds each in the store first; a request in, an Outcome out (exit 5 when not all good)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Tuple

from migrate.app.common import Io, Outcome, require_store
from migrate.core.errors import BadInput, BadLog, ExitCode, MigrateError


@dataclass(frozen=True)
class VerifyRequest:
    """run_ref: one run (None: every run of this pod not rolled back); comfyui_url: also ask a running
    ComfyUI; quick: sizes and mtimes instead of re-reading; comfyui_args: (text, where it came from)."""
    run_ref: Optional[str] = None
    comfyui: Optional[str] = None
    target: Optional[str] = None
    comfyui_url: Optional[str] = None
    quick: bool = False
    comfyui_args: Optional[Tuple[str, str]] = None


@dataclass(frozen=True)
class VerifyOutcome(Outcome):
    """result: verify.verify_pod's document (plus launch, comfyui: what ComfyUI at the URL lists);
    home: the ComfyUI folder, or None; launch: how it is started (launch.Launch), or None."""
    result: dict = field(default_factory=dict)
    home: Optional[str] = None
    target: str = ""
    launch: object = None

    command = "verify"


def unread_logs(target: str, yaml_path: Optional[str], host: str, live: set) -> None:
    """A log of this pod's that does not read (edited, damaged) is refused as rollback refuses it
    (exit 6, naming the line), rather than left out: verify then said "no run of this pod" or
    checked the other runs only and said "all good"."""
    from migrate.disk.journal import RUNS_DIR
    from migrate.core.model import STATE_DIR
    from migrate.disk.runlog import all_runs, load_run, run_state
    from migrate.app.verify import pod_runs
    for rid, _ in pod_runs(all_runs(target), target, yaml_path, host)[0]:
        path = os.path.join(target, STATE_DIR, RUNS_DIR, f"{rid}.jsonl")
        if rid in live:
            continue
        try:
            if run_state(path) == "rolled back":
                continue
        except BadLog:
            pass
        load_run(path)      # raises the BadLog that names what is wrong with it


def verify(req: VerifyRequest, io: Io) -> VerifyOutcome:
    """Check a pod against its runs' logs (`comfy-migrate verify`)."""
    from migrate.disk import catalogue as store_catalogue
    from migrate.app.pod import adopt_comfyui, open_cache, resolve_target
    from migrate.disk.journal import RUNS_DIR
    from migrate.core.model import STATE_DIR
    from migrate.disk.runlog import check_log, find_log, kept_records, live_runs, load_run
    from migrate.app.verify import pod_runs, verify_pod
    target = require_store(resolve_target(req.target))
    home = None
    try:
        from migrate.disk.facts import find_comfyui
        home = find_comfyui(req.comfyui)
    except MigrateError:
        if req.comfyui:     # a mistyped --comfyui: not the host's runs checked and "all good" (as rollback)
            raise
    adopt_comfyui(home, io)
    if req.run_ref:
        records = load_run(find_log(target, req.run_ref))
        runs = [(records[0].run, records)]
    else:
        host = os.uname().nodename
        yaml_path = os.path.join(home, "extra_model_paths.yaml") if home else None
        runs, how = pod_runs(live_runs(target), target, yaml_path, host)
        logs = os.path.join(target, STATE_DIR, RUNS_DIR)
        unread_logs(target, yaml_path, host, {rid for rid, _ in runs})
        if not runs:
            raise BadLog(f"no run of this pod to verify in {logs} (none not rolled back wrote "
                         f"{yaml_path or 'a YAML here'}, has its sources here or ran on host {host})",
                         "pass --comfyui DIR, or name the run (see `comfy-migrate history --target DIR`)")
        for rid, records in runs:
            check_log(records, os.path.join(logs, f"{rid}.jsonl"))
        io.debug(f"verifying {len(runs)} run(s) of this pod: {how}")
    launch = verify_launch(io, home, req.comfyui_args, runs)
    catalogue = store_catalogue.load(target)[0] if req.quick else None
    digests = None if req.quick else open_cache(False)      # records what it reads (SHA-256 for older files)
    with io.progress("verifying") as (_, on_bytes):
        res = verify_pod(runs, home, target, kept_records(target), req.quick, catalogue, on_bytes, launch, digests)
    if digests is not None:
        digests.save()
    if launch is not None:
        res["launch"] = launch.doc()
    if req.comfyui_url:
        res["comfyui"] = ask_comfyui(req.comfyui_url, runs, home, target, launch)
        res["not_listed_by_comfyui"] = res["comfyui"]["not_listed"]
        res["ok"] = res["ok"] and not res["not_listed_by_comfyui"] and not res["comfyui"]["stale"]
    return VerifyOutcome(ExitCode.OK if res["ok"] else ExitCode.VERIFY_FAILED, res, home, target, launch)


def verify_launch(io: Io, home, given, runs):
    """How the pod's ComfyUI is started, for verify: --comfyui-args, else the running ComfyUI's
    options, else those the newest run logged (it planned with them), else none."""
    from migrate.app.pod import resolve_launch
    from migrate.disk.launch import launch_of
    from migrate.disk.running import find_running
    if home is None or given is not None or find_running(home):
        return resolve_launch(home, given, io)
    head = runs[-1][1][0]
    logged = head.comfyui or {}
    args = logged.get("args")
    if isinstance(args, list) and args and all(isinstance(a, str) for a in args):
        try:
            return launch_of(home, args, f"as run {head.run} logged them", lenient=True)
        except MigrateError as exc:
            io.warn(f"the options run {head.run} logged for ComfyUI no longer apply ({exc}): verified without them")
    return resolve_launch(home, None, io)


def ask_comfyui(url: str, runs, home, target: str, launch=None) -> dict:
    """verify --comfyui-url: does the running ComfyUI list every name the runs took out of the
    sources, and does it look started before the YAML changed?"""
    from urllib.parse import urlsplit

    from migrate.disk.runlog import kept_records
    from migrate.disk.running import find_running
    from migrate.app.verify import check_listed, claims, read_server, resolution, stale_server, start_note
    try:
        view = read_server(url)
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read {url.rstrip('/')}/object_info: {exc}",
                       "is ComfyUI running at that URL (its own port, not a proxy's page)?")
    names = sorted(claims(runs, kept_records(target)))
    yaml_path = runs[-1][1][0].yaml
    order = resolution(yaml_path, home, launch)[0] if yaml_path and os.path.exists(yaml_path) else {}
    from migrate.disk.facts import loaded_models
    disk: dict = {}
    for cat, name in loaded_models(order):      # what the pod's ComfyUI lists: finds its loaders by their choices
        disk.setdefault(cat, []).append(name)
    listed = check_listed(names, view, disk)
    started = changed = None
    if home and yaml_path and os.path.exists(yaml_path):
        try:
            port = urlsplit(url).port
        except ValueError:
            port = None
        procs = [p for p in find_running(home) if port is None or p.port == port]
        started = max((p.started for p in procs if p.started is not None), default=None)
        changed = os.stat(yaml_path).st_ctime
    stale = stale_server(names, view, order, target, listed, started, changed)
    note = None if stale else start_note(view, started, changed)
    return dict(listed, url=url, nodes=view.nodes, stale=stale, note=note)
