"""PURE: a plan + what the paths it touches are now -> the plan with its preflight notes, or a refusal.

`run` must never meet, part-way, an obstacle the plan could have seen: every folder run creates or
writes in (the target and each folder on the way to a destination, a source folder it removes a
name from, the source's quarantine, the YAML's real folder) is checked here, from facts gathered by
facts.preflight_facts (lstat, access, statvfs). A refusal is a BadInput (exit 3), one line naming
the path and the fix, before anything is changed.

The rule for symlinked store folders, shared by run and rollback: a folder of the store that is a
symlink to a folder (`store/loras -> /big/loras`) is written through; the plan says so, and run
journals every symlink on the way before its first step, so rollback accepts exactly those (a
symlink planted since is still refused). A symlink to nothing, or to a file, is refused here.
"""
from __future__ import annotations

import posixpath
from typing import Dict, List, Optional, Sequence

from migrate.core.errors import BadInput
from migrate.core.storerules import UTF16, length


class StoreChanged(BadInput):
    """A file appeared in the store, since its scan, where the plan places one: another pod's run
    placing it (outside the lock: `run` waits for that run, then plans again), or a user's copy."""
from migrate.core.model import STATE_DIR, Method, Mode, Plan, PathFact, Removal


def needed_folders(plan: Plan) -> List[str]:
    """Every folder below the target that run places a file in, sorted."""
    return sorted({posixpath.dirname(a.dst) for a in plan.actions if a.dst and a.method is not Method.NONE})


def source_folders(plan: Plan) -> List[str]:
    """Every source folder run removes a name from (or leaves a symlink in), sorted."""
    out = set()
    for a in plan.actions:
        if a.removal is not Removal.NONE or a.link_back:
            out.add(posixpath.dirname(a.source))
        # a move may fall back to a copy and quarantine its source: its folder must take that too
        if plan.policy.mode is Mode.MOVE and a.method in (Method.HARDLINK, Method.RENAME):
            out.add(posixpath.dirname(a.source))
    return sorted(out)


def quarantine_roots(plan: Plan) -> List[str]:
    """The sources a run may quarantine files in (a move of a file whose content is already stored,
    or a move that copies)."""
    roots = set()
    for a in plan.actions:
        if a.removal is Removal.QUARANTINE or (plan.policy.mode is Mode.MOVE and a.method is not Method.NONE):
            roots.add(a.root)
    return sorted(roots)


def _fix_for_store(path: str) -> str:
    return f"move or rename {path} out of the way (it is not a folder), then plan again"


def check(plan: Plan, facts: Dict[str, PathFact], yaml_real: Optional[str]) -> Plan:
    """Refuse (BadInput) what run would fail on; return the plan with the preflight's notes."""
    notes: List[str] = []
    target = plan.target
    t = facts.get(target, PathFact("dir"))
    if t.kind == "missing":
        parent = facts.get(posixpath.dirname(target), PathFact("dir"))
        if not parent.is_dir:
            raise BadInput(f"the target {target} does not exist, nor its folder {posixpath.dirname(target)}: "
                           "a mistyped --target? (run creates only the target's last folder)",
                           f"check --target, or create the folder first: mkdir -p {posixpath.dirname(target)}")
        notes.append(f"the target {target} does not exist: run will create it (its last folder only)")
    elif not t.is_dir:
        raise BadInput(f"the target {target} is not a folder ({t.kind})", "pass --target DIR")
    state = facts.get(posixpath.join(target, STATE_DIR))
    if state is not None and state.kind not in ("dir", "missing"):
        raise BadInput(f"{posixpath.join(target, STATE_DIR)} is a {state.kind}, not the "
                       "store's state folder", _fix_for_store(posixpath.join(target, STATE_DIR)))
    seen_links = set()
    for folder in needed_folders(plan):
        cur = target
        for part in ([] if folder == target else posixpath.relpath(folder, target).split("/")):
            cur = posixpath.join(cur, part)
            f = facts.get(cur)
            if f is None or f.kind == "missing":
                break
            if f.kind == "symlink-dir":
                if cur not in seen_links:
                    seen_links.add(cur)
                    notes.append(f"store folder {cur} is a symlink to {f.to}: files are placed behind it "
                                 "(rollback accepts it, as it was before the run)")
                continue
            if f.kind == "dir":
                continue
            what = {"file": "a file", "symlink-dangling": f"a symlink to {f.to}, which does not exist",
                    "symlink-other": f"a symlink to {f.to}, which is not a folder"}.get(f.kind, "not a folder")
            raise BadInput(f"the store holds {what} at {cur}, where run needs a folder (to place files in {folder})",
                           _fix_for_store(cur))
    for a in plan.actions:
        if not a.dst or a.method is Method.NONE:
            continue
        f = facts.get(a.dst)
        if f is not None and f.kind not in ("missing",):
            raise StoreChanged(f"{a.dst} already exists in the store ({'a folder' if f.is_dir else f.kind}) and "
                               f"{a.source} would be placed there",
                               f"plan again (another pod's run placing it?); or move or rename {a.dst}")
        # (The plan kept on the pod every name the store's own filesystem refuses, in its own unit:
        # storerules.py. This is for a folder behind a symlink, on another filesystem.)
        where = facts.get(_nearest(posixpath.dirname(a.dst), facts, target))
        limit = where.name_max if where is not None else 255
        name = posixpath.basename(a.dst)
        unit = plan.target_fs.name_unit
        if length(name, unit) > limit:
            raise BadInput(f"the name {name!r} is {length(name, unit)} {'UTF-16 units' if unit == UTF16 else 'bytes'}, "
                           f"longer than the {limit} the store's filesystem takes (for {a.source})",
                           "rename the file to a shorter name, then plan again")
    for folder in sorted({_nearest(d, facts, target) for d in needed_folders(plan)} | ({target} if t.is_dir else set())):
        f = facts.get(folder)
        if f is not None and f.is_dir and not f.writable:
            raise BadInput(f"the store folder {folder} is not writable ({_why(f)})",
                           "remount the volume read-write or fix the folder's permissions, then plan again")
    # The sources: a move removes names there and quarantines what the store already holds.
    for folder in source_folders(plan):
        f = facts.get(folder)
        if f is not None and not f.writable:
            raise BadInput(f"the source folder {folder} is not writable ({_why(f)}): a move must remove its files "
                           "there or set them aside in its quarantine",
                           "use --mode copy (the sources stay as they are), or make the source writable")
    for root in quarantine_roots(plan):
        st = posixpath.join(root, STATE_DIR)
        f = facts.get(st)
        if f is not None and f.kind not in ("dir", "missing"):
            raise BadInput(f"{st} is a {f.kind}, where run keeps the source's quarantine",
                           f"move or rename {st}, or use --mode copy")
        if f is not None and f.kind == "dir" and not f.writable:
            raise BadInput(f"the quarantine folder {st} is not writable ({_why(f)})",
                           "use --mode copy (the sources stay as they are), or make it writable")
        r = facts.get(root)
        if (f is None or f.kind == "missing") and r is not None and not r.writable:
            raise BadInput(f"the source {root} is not writable ({_why(r)}): run cannot create its quarantine "
                           f"{st} there", "use --mode copy (the sources stay as they are), or make the source writable")
    if plan.yaml_path is not None and plan.yaml_changes and yaml_real is not None:
        folder = posixpath.dirname(yaml_real)
        f = facts.get(folder)
        via = f" (through the symlink {plan.yaml_path})" if yaml_real != plan.yaml_path else ""
        if f is None or not f.is_dir:
            raise BadInput(f"the folder {folder} of the YAML {yaml_real}{via} does not exist (a volume not mounted?)",
                           "mount it, or point --yaml at ComfyUI's real extra_model_paths.yaml")
        if not f.writable:
            raise BadInput(f"the YAML's folder {folder}{via} is not writable ({_why(f)}); run writes the YAML "
                           "there", "make it writable, then plan again")
        y = facts.get(yaml_real)
        if y is not None and y.kind not in ("file", "missing"):
            raise BadInput(f"{yaml_real}{via} is not a regular file ({y.kind})", "check the --yaml path")
    return plan._replace(notes=tuple(notes)) if notes else plan


def _nearest(folder: str, facts: Dict[str, PathFact], target: str) -> str:
    """The nearest folder at or above `folder` that exists now (per the facts)."""
    cur = folder
    while cur != target and cur != posixpath.dirname(cur):
        f = facts.get(cur)
        if f is not None and f.is_dir:
            return cur
        cur = posixpath.dirname(cur)
    return cur


def _why(f: PathFact) -> str:
    return "a read-only filesystem" if f.read_only else "no write permission"


def paths_to_check(plan: Plan, yaml_real: Optional[str]) -> Sequence[str]:
    """Every path whose fact check() reads (facts.preflight_facts gathers exactly these)."""
    target = plan.target
    out = {target, posixpath.dirname(target), posixpath.join(target, STATE_DIR)}
    for folder in needed_folders(plan):
        cur = target
        for part in ([] if folder == target else posixpath.relpath(folder, target).split("/")):
            cur = posixpath.join(cur, part)
            out.add(cur)
    out.update(a.dst for a in plan.actions if a.dst and a.method is not Method.NONE)
    out.update(source_folders(plan))
    for root in quarantine_roots(plan):
        out.update((root, posixpath.join(root, STATE_DIR)))
    if plan.yaml_path is not None and plan.yaml_changes and yaml_real is not None:
        out.update((yaml_real, posixpath.dirname(yaml_real)))
    return sorted(out)
