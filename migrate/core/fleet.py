"""PURE: the rules for many pods sharing one store.

- A run confirms a plan made without the lock, then plans again under it (the store may have
  changed meanwhile: another pod placed files). `plan_changes` says whether the new plan differs
  in a way the user must see again (a model would no longer reach the store, or under another
  name) or only in how (a file another pod placed is now "already there": less to copy).
- A stored file one run placed may be what another run relies on (its source was removed because
  the store already held that content, or it made a symlink to it). `relied_paths` lists those
  paths from a run's log; rollback keeps them in the store instead of removing them.
"""
from __future__ import annotations

import posixpath
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from migrate.core.model import Action, ActionKind, Plan
from migrate.core.steps import PLACES_FILE, REMOVES_SOURCE, STORES_SOURCE, Op

PLACED = (ActionKind.MOVE, ActionKind.LINK, ActionKind.COPY, ActionKind.ALREADY_THERE, ActionKind.SAME_CONTENT)


def _outcome(a: Optional[Action]) -> Tuple[bool, Optional[str]]:
    """What a user cares about: does this file end up in the store, and under which name."""
    if a is None:
        return False, None
    placed = a.kind in PLACED
    return placed, a.dst if placed else None


def plan_changes(confirmed: Plan, fresh: Plan) -> Tuple[List[str], List[str]]:
    """(changes that matter, changes that do not) from the confirmed plan to the fresh one.

    Matters: a file no longer placed (a conflict appeared), placed under another name, placed
    though it was not, or a file added/removed in the sources; the user's YAML edited meanwhile.
    Does not matter: how a file is placed (moved -> already there because another pod stored it).
    """
    old = {a.source: a for a in confirmed.actions}
    new = {a.source: a for a in fresh.actions}
    matters: List[str] = []
    how: Dict[str, int] = {}
    for src in sorted(set(old) | set(new)):
        a, b = old.get(src), new.get(src)
        if _outcome(a) != _outcome(b):
            if b is None:
                matters.append(f"{src}: gone from the source")
            elif a is None:
                matters.append(f"{src}: new in the source ({b.kind.value})")
            else:
                matters.append(f"{src}: was {a.kind.value}"
                               f"{' to ' + a.dst if a.dst and a.kind in PLACED else ''}, now {b.kind.value}"
                               f"{' to ' + b.dst if b.dst and b.kind in PLACED else ''}"
                               f"{': ' + b.reason if b.reason and b.kind not in PLACED else ''}")
        elif a is not None and b is not None and a.kind is not b.kind:
            key = f"{a.kind.value} -> {b.kind.value}"
            how[key] = how.get(key, 0) + 1
    if confirmed.yaml_before != fresh.yaml_before:
        matters.append(f"{fresh.yaml_path}: edited since the plan")
    notes = [f"{n} file(s) {k} (another run stored them meanwhile)" for k, n in sorted(how.items())]
    if fresh.bytes_to_copy != confirmed.bytes_to_copy:
        notes.append(f"bytes to copy: {confirmed.bytes_to_copy} -> {fresh.bytes_to_copy}")
    return matters, notes


def relied_paths(records: Sequence[dict]) -> Set[str]:
    """Stored paths a run relies on without having placed them itself.

    Its removed or quarantined sources whose content it trusted to a stored copy (`stored`), and
    the stored copies its symlinks point at. Begun steps count too (they may have happened). Where
    the run made its own hardlink of the stored copy (a done dedupe), that name keeps the content
    whatever happens to the other one: no reliance.
    """
    done = {r.get("step") for r in records if r.get("type") == "done"}
    own_links = {r.get("dst") for r in records if r.get("type") == "begin" and r.get("op") == Op.DEDUPE
                 and r.get("step") in done}
    out: Set[str] = set()
    for r in records:
        if r.get("type") != "begin":
            continue
        op = r.get("op")
        if op in REMOVES_SOURCE:
            p = r.get("stored") or r.get("dst")
            if isinstance(p, str) and r.get("dst") not in own_links:
                out.add(p)
        elif op == Op.SYMLINK and isinstance(r.get("dst"), str) and isinstance(r.get("to"), str):
            out.add(posixpath.normpath(posixpath.join(posixpath.dirname(r["dst"]), r["to"])))
    return out


def placed_by(records: Sequence[dict]) -> Set[str]:
    """Target paths this run itself put there (its own names, not reliance on others'). A step
    logged as failed put nothing there (one atomic call; a copy may have, when its last fsync failed),
    nor did one marked `unplaced` (rollback.settle: begun, never finished, and the name does not hold
    the file it would have put there; e.g. the pod was killed before the call and another pod's file
    took the name, which this run, continued, then trusted: reliance, not its own file)."""
    failed = {r.get("step") for r in records if r.get("type") == "fail"}
    unplaced = {r.get("step") for r in records if r.get("type") == "unplaced"}
    return {r["dst"] for r in records if r.get("type") == "begin"
            and r.get("op") in PLACES_FILE and isinstance(r.get("dst"), str)
            and (r.get("step") not in failed or Op(r["op"]).may_act_failed) and r.get("step") not in unplaced}


def store_rel(path: str, target: str) -> Optional[str]:
    """`path` relative to the store it was logged under (None if outside): pods may mount the
    volume at different paths (/workspace here, /runpod-volume there), so runs compare these."""
    root = target.rstrip("/") + "/"
    return path[len(root):] if isinstance(path, str) and path.startswith(root) else None


def reliance(runs: Iterable[Tuple[str, Sequence[dict]]], run_id: str) -> Dict[str, List[str]]:
    """Store-relative path -> the other runs (not rolled back) relying on it, for the rollback of run_id.

    runs: (run id, records) of every run in the target that is not rolled back. Paths are taken
    relative to each run's own logged target, whatever path that pod mounted the volume at.
    """
    runs = list(runs)
    out: Dict[str, List[str]] = {}
    mine = next((records for rid, records in runs if rid == run_id and records), None)
    names = _placed_names(mine) if mine else {}
    for rid, records in runs:
        if rid == run_id or not records:
            continue
        target = records[0].get("target") or ""
        own = placed_by(records)
        for p in sorted(relied_paths(records) - own):
            rel = store_rel(p, target)
            if rel is not None:
                out.setdefault(rel, []).append(rid)
        # A name of that run that loads this file after it (its own file of that name stayed, a
        # conflict: the store's is searched first): taking the file out would change what it loads.
        loaded = _names_loaded(records) if names else set()
        for rel in sorted(rel for rel, key in names.items() if key in loaded):
            if rid not in out.get(rel, []):
                out.setdefault(rel, []).append(rid)
    return out


def _placed_names(records: Sequence[dict]) -> Dict[str, Tuple[str, str, str]]:
    """Store-relative path -> (category, name, digest) of each file a run placed in the store."""
    from migrate.core.comfy import category_of
    target = records[0].get("target") or ""
    done = {r.get("step") for r in records if r.get("type") == "done"}
    out: Dict[str, Tuple[str, str, str]] = {}
    for r in records:
        if r.get("type") == "begin" and r.get("op") in STORES_SOURCE and r.get("step") in done \
                and isinstance(r.get("dst"), str) and isinstance(r.get("digest"), str):
            rel = store_rel(r["dst"], target)
            if rel is not None and "/" in rel:
                folder, name = rel.split("/", 1)
                out[rel] = (category_of(folder)[0], name, r["digest"])
    return out


def _names_loaded(records: Sequence[dict]) -> Set[Tuple[str, str, str]]:
    """(category, name, digest) ComfyUI loads after the run for each name it answers for (its `names` record)."""
    rec = next((r for r in reversed(records) if r.get("type") == "names"), None)
    return {(n[0], n[1], n[2]) for n in (rec or {}).get("names") or []
            if isinstance(n, list) and len(n) == 4 and all(isinstance(x, str) for x in n[:3])}


def placed_elsewhere(runs: Iterable[Tuple[str, Sequence[dict]]], run_id: str) -> Set[str]:
    """Store-relative names another run (not rolled back) put there itself: never a kept file to
    drop, even if a keep record names the same path (it was dropped and placed anew since, e.g.
    as that run's dedupe link, whose source was removed trusting it)."""
    out: Set[str] = set()
    for rid, records in runs:
        if rid == run_id or not records:
            continue
        target = records[0].get("target") or ""
        out |= {rel for rel in (store_rel(p, target) for p in placed_by(records)) if rel is not None}
    return out


def droppable(kept: Iterable[dict], records: Sequence[dict], runs: Iterable[Tuple[str, Sequence[dict]]]) -> List[dict]:
    """Keep records whose file the rollback of this run takes out of the store: kept for it, or
    relied on by it (a later run of the pod that placed it, not named in the record), and neither
    relied on nor placed by any other run still live. One per stored name."""
    runs = list(runs)
    run_id, target = records[0]["run"], records[0].get("target") or ""
    mine = {store_rel(p, target) for p in relied_paths(records) - placed_by(records)}
    blocked = set(reliance(runs, run_id)) | placed_elsewhere(runs, run_id)
    return list({k["rel"]: k for k in kept if isinstance(k.get("rel"), str) and k["rel"] not in blocked
                 and (run_id in k.get("for", []) or k["rel"] in mine)}.values())
