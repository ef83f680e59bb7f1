"""attach: point this ComfyUI at a store that exists, moving no byte (issue 21).

The store outlives the pod: a redeploy rebuilds the container from its image (ComfyUI's code and
its models/ placeholders come back, the YAML goes unless the image carries it), a second install
or a ComfyUI update shares the store, a serverless worker mounts the volume at another path.
`attach` writes the managed section of the YAML this ComfyUI reads, from what the store holds (its
folders; stat only, no byte of a model is read) and the installed ComfyUI's own categories, as
`run` writes it, and leaves every file of the image where it is. What would then load other bytes
than today (a model baked into the image whose name the store holds with other content) is
declared as `plan` declares it (`name_changes`).

gather_attach reads the disk (stat only); plan_attach is PURE and returns a Plan without file
actions, which run's executor journals like any run: `rollback` restores the YAML as it was.
"""
from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from migrate.core import comfy, names, plan as planning
from migrate.core.model import Action, ActionKind, PathFacts, Plan, Policy, Removal, ScanResult, Status

# A logged source: path -> (size, mtime_ns, digest), from the store's run logs.
Logged = Dict[str, Tuple[int, int, str]]


@dataclass(frozen=True)
class AttachFacts:
    """What attach needs from the disk, all by stat (gather_attach).

    Args:
        target: the store, as given.
        yaml_path: the YAML this ComfyUI reads (<comfyui>/extra_model_paths.yaml).
        yaml_real: the same, from its real folder (where ComfyUI resolves it from).
        yaml_before: its text, None when there is none.
        models: ComfyUI's own models folder, scanned (stat only; digests where a log knows the file).
        store: the store, scanned (stat only; digests from its catalogue where its entry matches).
        store_dirs: the names of the folders at the store's top.
        paths: where the YAML and the store really are (facts.path_facts), for base_path.
        spec: the --base-path form to write (given, else the YAML's own: comfy.kept_base_spec).
        link_backs: (path under this ComfyUI's models folder, stored file) of each link-back symlink
            a live run made there (for custom nodes that open ComfyUI/models/<folder> directly)
            which is gone now (a rebuilt container) while its stored file is there.
    """

    target: str
    yaml_path: str
    yaml_real: str
    yaml_before: Optional[str]
    models: ScanResult
    store: ScanResult
    store_dirs: frozenset
    paths: PathFacts
    spec: str
    link_backs: Tuple[Tuple[str, str], ...] = ()
    yamls: Tuple[Tuple[str, Optional[str]], ...] = ()     # every YAML ComfyUI reads, in order (launch.Launch)
    output: Tuple[Tuple[str, str], ...] = ()              # the output folders main.py adds (launch.Launch)
    outside: Tuple[ScanResult, ...] = ()                  # those YAMLs' and output folders outside models/
                                                          # and the store, scanned (stat only)


@dataclass(frozen=True)
class Attach:
    """plan_attach's result: the plan run's executor carries out, and the names whose bytes could
    not be compared by stat alone (same size, no known digest: `verify` re-hashes)."""

    plan: Plan
    not_compared: Tuple[names.NameChange, ...]


def store_folders(store: ScanResult, store_dirs: frozenset) -> Dict[str, set]:
    """category -> the store's folders for it: those holding anything, and the empty category folders."""
    out: Dict[str, set] = {}
    for r in store.records:
        if r.category:
            out.setdefault(r.category, set()).add(r.folder)
    for d in store_dirs:
        cat, custom = comfy.category_of(d)
        if not custom and not d.startswith("."):
            out.setdefault(cat, set()).add(d)
    return out


def _view(f: AttachFacts) -> names.View:
    tree: Dict[str, names.Node] = {}
    for scan in (f.models, f.store) + tuple(f.outside):
        for r in scan.records:
            if r.status is Status.SYMLINK:
                tree[r.path] = names.Node("link", 0, None, r.link_target)
            elif r.status is not Status.SPECIAL:
                tree[r.path] = names.Node("file", r.size, r.digest, None)
    roots = [f.models.root, f.target] + [s.root for s in f.outside]
    aliases = [(os.path.realpath(r), r) for r in roots]
    return names.View(tree, roots, aliases)


def plan_attach(f: AttachFacts) -> Attach:
    """PURE: the YAML with the store first for every category (run's managed_yaml), the store
    folders to make, and the names that would load other bytes than they do now."""
    folders = store_folders(f.store, f.store_dirs)
    after, base, made, warnings = planning.managed_yaml(f.yaml_path, f.yaml_before, folders, f.target, f.spec,
                                                        f.paths, f.store_dirs)
    view = _view(f)
    models_dir = os.path.realpath(f.models.root)
    if after == f.yaml_before:      # attached already (every boot): the same search order, no change
        loads_before = loads_after = {}
    else:
        world = planning.World(yamls=f.yamls)      # as ComfyUI is started: its other YAMLs, output folders
        before_order = comfy.search_folders(planning._yamls(world, f.yaml_real, f.yaml_before), models_dir,
                                            output=f.output)
        after_order = comfy.search_folders(planning._yamls(world, f.yaml_real, after), models_dir, output=f.output)
        loads_before = names.loads(before_order, view)
        loads_after = names.loads(after_order, view)
    in_store = f.target.rstrip("/") + "/"

    def why(cat: str, name: str, b: str, a: Optional[str]) -> str:
        if a is None:
            return planning._REASONS["gone"]
        return planning._REASONS["store"] if a.startswith(in_store) else planning._REASONS["other"]

    changes, unknown = [], []
    for c in names.compare(loads_before, loads_after, view, view, why):
        nb = view.tree.get(c.before)
        na = view.tree.get(c.after) if c.after is not None else None
        if nb is not None and na is not None and nb.size == na.size and (nb.digest is None or na.digest is None):
            unknown.append(c)       # same size, content unknown by stat: not claimed either way
        else:
            changes.append(c)
    if changes:
        warnings.append(f"{len(changes)} name(s) would load other bytes after attach: see name changes")
    if unknown:
        warnings.append(f"{len(unknown)} name(s) of the image have a file of the same size in the store, searched "
                        "first; attach reads no file, so their bytes were not compared (`comfy-migrate verify` "
                        "re-hashes what the runs placed)")
    root = f.models.root
    actions = tuple(Action(ActionKind.SKIP, root=root, rel=os.path.relpath(src, root),
                           category=comfy.category_of(os.path.relpath(src, root).split("/", 1)[0])[0], dst=dst,
                           removal=Removal.RENAMED, link_back=True,
                           reason="a link-back symlink a run made, gone with the container: made again")
                    for src, dst in f.link_backs)
    plan = Plan(target=f.target, sources=(root,) if actions else (), yaml_path=f.yaml_path,
                yaml_before=f.yaml_before, yaml_after=after,
                policy=Policy(base_path=f.spec), actions=actions, probes=(), target_hardlinks=False,
                target_categories=tuple(sorted(folders)), warnings=tuple(warnings), base_path=base,
                paths=f.paths, name_changes=tuple(changes), store_folders=made)
    return Attach(plan, tuple(unknown))


# --- the shell side: facts by stat ----------------------------------------------------------------

def logged_sources(target: str) -> Logged:
    """Every source file the store's runs logged (placed, or removed as already stored), with its
    size, mtime and digest: a file of the image at that path with that size and mtime is taken to
    hold that digest (a belief, used only to say which names change, never to free a byte)."""
    from migrate.disk.journal import read_log, run_logs
    from migrate.core.errors import BadLog
    out: Logged = {}
    for _, path in run_logs(target):
        try:
            records = read_log(path)[0]
        except BadLog:
            continue
        for r in records:
            if r.get("type") == "stayed":       # conflicts the run left in place, with their digests
                for item in r.get("files") or []:
                    if isinstance(item, list) and len(item) == 4 and isinstance(item[0], str) \
                            and isinstance(item[1], int) and isinstance(item[2], int) and isinstance(item[3], str):
                        out[item[0]] = (item[1], item[2], item[3])
                continue
            if r.get("type") == "begin" and isinstance(r.get("src"), str) and isinstance(r.get("digest"), str) \
                    and isinstance(r.get("size"), int) and isinstance(r.get("mtime_ns"), int):
                out[r["src"]] = (r["size"], r["mtime_ns"], r["digest"])
    return out


def lost_link_backs(target: str, models_dir: str) -> Tuple[Tuple[str, str], ...]:
    """The link-back symlinks live runs made in a models folder (custom-node folders: their nodes
    open ComfyUI/models/<folder> directly), mapped to this ComfyUI's models folder (a worker's
    own, or the rebuilt container's), that are gone while their stored file is in the store:
    (where the link goes, the stored file). Read from the logs: no model file is read."""
    from migrate.core.fleet import store_rel
    from migrate.disk.journal import group_steps
    from migrate.disk.runlog import live_runs
    from migrate.core.steps import Op
    out: Dict[str, str] = {}
    for _, records in live_runs(target):
        head = records[0]
        steps = group_steps(records)
        for b in steps.begins:
            if b.get("op") != Op.LINKBACK or b["step"] not in steps.done or not isinstance(b.get("src"), str):
                continue
            root = next((r for r in head.get("sources") or [] if isinstance(r, str)
                         and b["src"].startswith(r.rstrip("/") + "/")), None)
            rel = store_rel(posixpath.normpath(posixpath.join(posixpath.dirname(b["src"]), b.get("to") or "")),
                            head.get("target") or "")
            if root is None or rel is None:
                continue
            src = os.path.join(models_dir, os.path.relpath(b["src"], root))
            stored = os.path.join(target, rel)
            if not os.path.lexists(src) and os.path.isfile(stored):
                out[src] = stored
    return tuple(sorted(out.items()))


def _candidates(models: ScanResult, store: ScanResult) -> Tuple[set, set]:
    """(model paths, store rels) of the image's files whose name the store holds at the same size:
    only those need a digest (by size alone, other sizes are other bytes)."""
    sizes = {r.rel: r.size for r in store.records if r.status is Status.MIGRATE}
    mine, theirs = set(), set()
    for r in models.records:
        if r.status is not Status.MIGRATE or not r.category:
            continue
        rel = f"{r.folder if r.custom else r.category}/{r.name}"        # plan.target_path's, relative
        if sizes.get(rel) == r.size:
            mine.add(r.path)
            theirs.add(rel)
    return mine, theirs


def gather_attach(home: str, target: str, base_path: Optional[str], launch=None) -> AttachFacts:
    """Read what attach needs (stat only; a model's digest comes from the store's catalogue or its
    runs' logs, only for a name the image and the store hold at the same size)."""
    from migrate.disk import catalogue as store_catalogue
    from migrate.disk.facts import path_facts, read_yaml, top_folders
    from migrate.disk.scan import scan_tree
    yaml_path = os.path.join(home, "extra_model_paths.yaml")
    yaml_before = read_yaml(yaml_path)
    spec = base_path or comfy.kept_base_spec(yaml_before, yaml_path)
    models_dir = launch.models if launch is not None else os.path.join(home, "models")
    models = scan_tree(models_dir) if os.path.isdir(models_dir) else ScanResult(models_dir, ())
    store = scan_tree(target)
    mine, theirs = _candidates(models, store)
    if mine:
        cat, _ = store_catalogue.load(target)
        store = store._replace(records=tuple(
            r._replace(digest=store_catalogue.lookup(cat, r.rel, (r.ino, r.size, r.mtime_ns), r.ctime_ns))
            if r.rel in theirs else r for r in store.records))
        logged = logged_sources(target)

        def known(r) -> Optional[str]:
            got = logged.get(r.path)
            return got[2] if got is not None and got[:2] == (r.size, r.mtime_ns) else None

        models = models._replace(records=tuple(r._replace(digest=known(r)) if r.path in mine else r
                                               for r in models.records))
    paths = path_facts(yaml_path, target, spec)
    yaml_real = os.path.join(os.path.realpath(home), "extra_model_paths.yaml")
    dirs = top_folders(target)
    # Runs leave link-backs in custom-node folders (ComfyUI's own categories are in the YAML): the
    # logs are read only where the store has such a folder (a start script runs attach at every boot).
    # Exact by stat first: a link-back stands at the stored file's own name under models/ (a
    # custom-node folder keeps its name in the store); logs are read only when one is missing.
    custom = any(r.custom and r.status is Status.MIGRATE and not os.path.lexists(os.path.join(models_dir, r.rel))
                 for r in store.records)
    yamls = tuple((yaml_real, yaml_before) if os.path.realpath(p) == os.path.realpath(yaml_real) else (p, read_yaml(p))
                  for p in (launch.yamls if launch is not None else ()))
    outside = []
    if launch is not None:      # the folders ComfyUI also searches: their names count as the pod's
        order = comfy.search_folders(planning._yamls(planning.World(yamls=yamls), yaml_real, yaml_before),
                                     os.path.realpath(models_dir), output=launch.output_folders())
        inside = [os.path.realpath(models_dir), os.path.realpath(target)]
        seen = set()
        for folder in sorted({f for fs in order.values() for f in fs}):
            real = os.path.realpath(folder)
            if real in seen or not os.path.isdir(real) or any(real == r or real.startswith(r.rstrip("/") + "/")
                                                                for r in inside + sorted(seen)):
                continue
            seen.add(real)
            outside.append(scan_tree(folder))
    return AttachFacts(target, yaml_path, yaml_real, yaml_before, models, store, dirs, paths, spec,
                       lost_link_backs(target, models_dir) if custom else (), yamls,
                       tuple(launch.output_folders()) if launch is not None else (), tuple(outside))


def problems_of(f: AttachFacts) -> Sequence[str]:
    """What the scans could not read (said, never fatal: attach reads no model)."""
    return [f"{p.path}: {p.message}" for s in (f.models, f.store) for p in s.problems]


def made_lines(plan: Plan) -> List[str]:
    return [f"make store folder {d}" for d in plan.store_folders]
