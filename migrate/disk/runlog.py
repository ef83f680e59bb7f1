"""The run logs of a store, read: which runs there are, their state, which one a command means.

Queries only (nothing here writes): `find_log` (a run id -> its log), `load_run` (a log read and
checked once: hash chain, paths, step fields), `run_state`, `history` (one row per run),
`live_runs`/`all_runs` (the runs not rolled back, or all), `kept_records` (files rollbacks kept for
other runs), `quarantined` (what purge may free), `left_folders`, `find_interrupted` (a run to continue).
"""
from __future__ import annotations

import json
import os
import posixpath
import socket
from typing import List, Optional, Sequence, Tuple

from migrate.core.errors import BadLog
from migrate.core.fleet import store_rel
from migrate.disk.journal import EmptyLog, group_steps, read_begun, read_log, rollback_log_of, run_logs
from migrate.core.model import STATE_DIR
from migrate.core.steps import PLACES, REMOVES_SOURCE, Op

PATH_FIELDS = ("src", "dst", "tmp", "q", "stored", "path")


class NothingToRollBack(Exception):
    """Every run in the target is rolled back already (not an error: a re-run after success)."""


def find_log(target: str, run: Optional[str], newest: bool = False, host: Optional[str] = None) -> str:
    """A run id or log path -> the run's log; default: the newest run not rolled back
    (with newest=True: the newest run whatever its state). With `host`, the default is chosen
    among that host's runs only: on a store shared by pods, a bare `rollback` must not undo
    another pod's run."""
    runs = os.path.join(target, STATE_DIR, "runs")
    if run and (os.sep in run or run.endswith(".jsonl")):
        return os.path.abspath(run)
    if run:
        path = os.path.join(runs, f"{run}.jsonl")
        if not os.path.exists(path):
            raise BadLog(f"no run {run} in {runs}", "see `comfy-migrate history --target DIR`")
        return path
    names = [n for n, _ in run_logs(target)]
    if host is not None and names:
        mine = [n for n in names if _host_of(os.path.join(runs, n)) == host]
        if not mine:
            raise BadLog(f"no run of this host ({host}) in {runs}; the runs there are other pods'",
                         "name the run to undo (see `comfy-migrate history --target DIR`)")
        names = mine
    if newest and names:
        return os.path.join(runs, names[-1])
    for n in reversed(names):
        rb = read_begun(rollback_log_of(os.path.join(runs, n)))
        if rb is not None and rb[-1].get("type") == "close" and not rb[-1].get("incomplete"):
            continue
        return os.path.join(runs, n)
    if names:
        raise NothingToRollBack(f"every run in {target} is rolled back already")
    raise BadLog(f"no run to roll back in {runs}", "check --target (see `comfy-migrate history`)")


def _host_of(log: str) -> Optional[str]:
    try:
        with open(log, "rb") as f:
            return json.loads(f.readline()).get("host")
    except (OSError, ValueError):
        return None


def load_run(log_path: str) -> List[dict]:
    """A run's log, read and checked once for undoing: its hash chain (read_log), its paths
    (check_log), the fields of its step records (records.check_steps)."""
    from migrate.core.records import check_steps
    records, _, _ = read_log(log_path)
    check_log(records, log_path)
    check_steps(records, log_path)
    return records


def check_log(records: Sequence[dict], path: str) -> None:
    """Refuse a log whose paths fall outside the roots its header names."""
    head = records[0]
    roots = [head.get("target")] + list(head.get("sources") or [])
    if not all(isinstance(r, str) and posixpath.isabs(r) for r in roots):
        raise BadLog(f"{path}: line 1: the header's roots are not absolute paths", "restore the original log")
    for i, rec in enumerate(records, 1):
        for f in PATH_FIELDS:
            p = rec.get(f)
            if p is None or rec.get("type") in ("header", "resume"):
                continue
            if f == "path" and rec.get("op") == Op.YAML and p == head.get("yaml"):
                continue
            if not isinstance(p, str) or posixpath.normpath(p) != p or not any(
                    p.startswith(r.rstrip("/") + "/") for r in roots):
                raise BadLog(f"{path}: line {i}: {f} {p!r} is outside the run's source and target folders",
                             "the log was edited; restore the original")
        if rec.get("type") == "links":
            tgt = head["target"].rstrip("/") + "/"
            for d, to in (rec.get("dirs") or {}).items():
                if not isinstance(d, str) or posixpath.normpath(d) != d or not d.startswith(tgt) or not isinstance(to, str):
                    raise BadLog(f"{path}: line {i}: symlinked folder {d!r} is outside the run's target",
                                 "the log was edited; restore the original")
        if rec.get("type") == "dirtimes":
            # The YAML's folder, and the folder of the file behind it when it is a symlink (written
            # through the link), as the header (or a continued run's resume record) names them.
            yaml_dirs = {posixpath.dirname(h[k]) for h in records[:i] if h.get("type") in ("header", "resume")
                         for k in ("yaml", "yaml_real") if isinstance(h.get(k), str) and posixpath.isabs(h[k])}
            for d, ns in (rec.get("dirs") or {}).items():
                if posixpath.normpath(d) != d or not isinstance(ns, int) or not (d in yaml_dirs or any(
                        d == r or d.startswith(r.rstrip("/") + "/") for r in roots)):
                    raise BadLog(f"{path}: line {i}: folder {d!r} is outside the run's source and target "
                                 "folders", "the log was edited; restore the original")
        before = rec.get("before")
        if before is not None and not (isinstance(before, str) and posixpath.normpath(before) == before and
                                       before.startswith(posixpath.join(head["target"], STATE_DIR) + "/")):
            raise BadLog(f"{path}: line {i}: YAML pre-image {before!r} is outside the state folder",
                         "the log was edited; restore the original")


def run_state(log_path: str) -> str:
    records, _, _ = read_log(log_path)
    rbr = read_begun(rollback_log_of(log_path))     # one that never wrote a record did nothing
    if rbr is not None:
        if rbr[-1].get("type") != "close":
            return "rollback interrupted"
        return "rollback incomplete" if rbr[-1].get("incomplete") else "rolled back"
    last = records[-1]
    if last.get("type") == "close":
        return "complete" if last.get("state") == "complete" else "complete with problems"
    if last.get("type") == "stopped":
        return "stopped: disk full (free space, then run or rollback)"
    return "interrupted"


def history(target: str) -> List[dict]:
    """One row per run log in the target, oldest first; `kind` says what made it: "run" (a migration)
    or "attach" (moved no model, wrote the YAML), "" where the log holds no readable header."""
    rows = []
    for n, path in run_logs(target):
        try:
            records, _, _ = read_log(path)
            state = run_state(path)
        except EmptyLog as exc:      # killed (or refused by a full disk) before its first record: did nothing
            rows.append({"run": n[:-6], "time": "", "host": "", "files": 0, "bytes": 0, "placed": 0, "relied": 0,
                         "kind": "", "state": f"nothing done: {exc}"})
            continue
        except BadLog as exc:
            rows.append({"run": n[:-6], "time": "", "host": "", "files": 0, "bytes": 0, "placed": 0, "relied": 0,
                         "kind": "", "state": f"bad log: {exc}"})
            continue
        head = records[0]
        steps = group_steps(records)
        placed = [b for b in steps.begins if b["op"] in PLACES and b["step"] in steps.done]
        # Sources set aside because the store held their content already: the run relies on those
        # stored files (it placed nothing for them, yet ComfyUI now loads them from the store).
        moved = {b.get("src") for b in placed}
        relied = [b for b in steps.begins if b["op"] in REMOVES_SOURCE and b["step"] in steps.done
                  and b.get("src") not in moved]
        rows.append({"run": head["run"], "time": head.get("time", ""), "host": head.get("host", ""),
                     "files": len(placed) + len(relied), "bytes": sum(b.get("size", 0) for b in placed + relied),
                     "placed": len(placed), "relied": len(relied),
                     "kind": head.get("kind") or "run", "state": state})
    return rows


def live_runs(target: str) -> List[Tuple[str, List[dict]]]:
    """(run id, records) of every run in the target not rolled back (unreadable logs are skipped: their
    runs cannot be undone anyway, and history shows them). rollback.settled adds, for fleet.reliance,
    the placements a run began but never made."""
    out = []
    for n, path in run_logs(target):
        try:
            if run_state(path) == "rolled back":
                continue
            out.append((n[:-6], read_log(path)[0]))
        except BadLog:
            continue
    return out


def all_runs(target: str) -> List[Tuple[str, List[dict]]]:
    """(run id, records) of every run in the target, rolled back or not. A log that does not read
    cleanly counts by its first line alone (its run is still chosen by its YAML or host, and then
    refused by load_run with the line named); one without even that is skipped."""
    out = []
    for n, path in run_logs(target):
        try:
            out.append((n[:-6], read_log(path)[0]))
        except BadLog:
            try:
                with open(path, "rb") as f:
                    head = json.loads(f.readline())
            except (OSError, ValueError):
                continue
            if isinstance(head, dict):
                out.append((n[:-6], [head]))
    return out


def kept_records(target: str) -> List[dict]:
    """Every `keep` record of every rollback log in the target: files kept for other runs."""
    runs = os.path.join(target, STATE_DIR, "runs")
    out: List[dict] = []
    for n in sorted(os.listdir(runs) if os.path.isdir(runs) else []):
        if n.endswith(".rollback.jsonl"):
            try:
                out.extend(r for r in read_log(os.path.join(runs, n))[0] if r.get("type") == "keep")
            except BadLog:
                continue
    return out


def quarantined(records: List[dict]) -> List[dict]:
    """Done quarantine steps of a run: what purge may free."""
    steps = group_steps(records)
    return [b for b in steps.begins if b["op"] == Op.QUARANTINE and b["step"] in steps.done]


def left_folders(target: str, this_run: str) -> List[str]:
    """Folders in the store that runs now rolled back (and this one) made: the candidates for
    removal once empty (a folder a live run made stays theirs). Paths as this pod mounts the store."""
    out = []
    for n, path in run_logs(target):
        rid = n[:-len(".jsonl")]
        try:
            records = read_log(path)[0]
            if rid != this_run and run_state(path) != "rolled back":
                continue
        except BadLog:
            continue
        logged = records[0].get("target") or ""
        for r in records:
            if r.get("type") == "begin" and r.get("op") == Op.MKDIR and isinstance(r.get("path"), str):
                rel = store_rel(r["path"], logged)
                if rel:
                    out.append(posixpath.join(target, rel))
    return out


def finished_here(target: str) -> Optional[str]:
    """The id of the run this process wrote or continued (its header or a `resume` record names this
    pid on this host), if its log is closed: a Ctrl-C that came after its last record found it done.
    Only the newest logs are looked at: this process's is among them."""
    for n, path in reversed(run_logs(target)[-8:]):
        try:
            records = read_log(path)[0]
        except BadLog:
            continue
        if any(r.get("pid") == os.getpid() and r.get("host") == socket.gethostname()
               for r in records if r is records[0] or r.get("type") == "resume"):
            return n[:-len(".jsonl")] if records[-1].get("type") == "close" else None
    return None


def find_interrupted(target: str, sources: Optional[Sequence[str]] = None, yaml: Optional[str] = None) -> Optional[str]:
    """The newest run log with no closing record and no rollback: a run to continue.

    With `sources`, only a run of this host sharing a source or the YAML counts: on a shared store
    another pod's interrupted run is that pod's to continue (or roll back) and does not block
    this one (pods often have the same paths: /workspace/ComfyUI on each container).
    """
    for _, path in reversed(run_logs(target)):
        try:
            if read_begun(rollback_log_of(path)) is not None:
                continue    # rolled back, or being rolled back (a rollback that wrote no record did nothing)
        except BadLog:
            continue
        try:
            records, _, _ = read_log(path)
        except EmptyLog:
            continue        # died writing its header (or another pod is writing it): nothing done
        if sources is not None and (records[0].get("host") != socket.gethostname() or not (
                set(records[0].get("sources") or []) & set(sources) or (yaml is not None and records[0].get("yaml") == yaml))):
            continue
        if records[-1].get("type") != "close":
            return path
        return None
    return None
