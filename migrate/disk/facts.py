"""Gather what planning needs from the disk: scans with digests, probes, the YAML, free space.

This is the read side of the shell: it never changes a model file or the YAML (a probe link is
created and removed in the target's nearest existing folder, whose times are put back).
"""
from __future__ import annotations

import errno
import os
import stat
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from migrate.disk import catalogue as store_catalogue, fsops
from migrate.core import plan as planning
from migrate.core.comfy import DEFAULT_COMFYUI, check_dir, find_comfyui  # noqa: F401 (they lived here)
from migrate.core.errors import BadInput
from migrate.disk.hashing import DigestCache
from migrate.core.model import UNPROBED, Finding, FsFacts, PathFact, PathFacts, Plan, Policy, Probe, ScanResult, Status
from migrate.disk.scan import hash_records, scan_tree

DEFAULT_TARGET = "/workspace/models"


def check_writable(target: str) -> None:
    """The target (or the folder it will be created in) must take new files: refused before any
    plan, rather than a plan of moves that `run` cannot make (a read-only mount, no permission)."""
    where = fsops.nearest_existing(target)
    if not os.access(where, os.W_OK | os.X_OK):
        why = "a read-only filesystem" if os.statvfs(where).f_flag & os.ST_RDONLY else "no write permission"
        raise BadInput(f"the target {target} is not writable ({why} at {where})",
                       "choose a writable --target, or remount the volume read-write")


@dataclass(frozen=True)
class Facts:
    sources: Tuple[ScanResult, ...]
    target: str
    target_scan: Optional[ScanResult]
    probes: Tuple[Probe, ...]
    target_hardlinks: bool
    yaml_path: Optional[str]
    yaml_before: Optional[str]
    free_bytes: int
    findings: Tuple[Finding, ...] = ()     # the audit of the sources (see sniff.check_sources)
    catalogue: Optional[store_catalogue.Catalogue] = None    # read only when the digest cache missed
    catalogue_warning: str = ""
    catalogue_hits: int = 0                          # stored files whose digest came from it
    started_ns: int = 0                              # when gathering began: no digest here is older
    world: Optional[planning.World] = None           # what the name resolver needs beyond the scans
    target_fs: FsFacts = UNPROBED                    # what the store's filesystem does (fsops.probe_fs)
    layers: Optional[Dict[str, str]] = None          # overlay sources: path -> plan.LOWER / plan.UNKNOWN
    container_free: Optional[int] = None             # free space of the overlay sources' container disk
    state_bytes: int = 0                             # space our state files in the store take (state_bytes())
    launch: object = None                            # launch.Launch: how ComfyUI is started (None: unknown)
    store_dirs: Optional[frozenset] = None           # names of the folders at the store's top (None: no store yet)


def _from_catalogue(scan: ScanResult, cat: store_catalogue.Catalogue) -> Tuple[ScanResult, int]:
    """Digests of stored files the catalogue knows at their current (inode, size, mtime): not read."""
    records, hits = [], 0
    for r in scan.records:
        d = store_catalogue.lookup(cat, r.rel, (r.ino, r.size, r.mtime_ns), r.ctime_ns) if r.status is Status.MIGRATE else None
        if d is not None:
            r, hits = r._replace(digest=d), hits + 1
        records.append(r)
    return scan._replace(records=tuple(records)), hits


def symlinked_folders(scan: ScanResult) -> List[Tuple[str, str]]:
    """(real path, path in the store) of each folder of the store that is a symlink to a folder
    outside it (`store/loras -> /big/loras`, at any depth): run writes through it (preflight.py),
    through_links enters it, and the name resolver lists what it holds under the store's name (a
    World alias), as ComfyUI's walk, which follows symlinks, does. Not one found behind another
    such folder (through_links enters one level), nor one into the store itself: that folder is
    scanned under its own name. Sorted by path."""
    root = os.path.realpath(scan.root)      # the store's root may itself be a symlink (--target)
    out: List[Tuple[str, str]] = []
    for link in sorted(scan.records, key=lambda r: r.rel):
        if link.status is not Status.SYMLINK or not os.path.isdir(link.path):
            continue
        if any(link.path.startswith(given + "/") for _, given in out):
            continue        # behind an entered folder: not entered
        real = os.path.realpath(link.path)
        if real == root or real.startswith(root.rstrip("/") + "/"):
            continue        # inside the store: scanned under its own name already
        out.append((real, link.path))
    return out


def through_links(scan: ScanResult) -> ScanResult:
    """The store's scan with what its symlinked folders hold (symlinked_folders), under the
    store's names: run writes through such a folder (preflight.py), so the plan must know what is
    already behind it. One level: a symlinked folder behind a symlinked folder is not entered."""
    from migrate.core.comfy import category_of as comfy_category
    from migrate.disk.scan import classify
    extra = []
    problems = list(scan.problems)
    by_path = {r.path: r for r in scan.records}
    for _, path in symlinked_folders(scan):
        link = by_path[path]
        inner = scan_tree(link.path)
        problems.extend(inner.problems)
        folder = link.rel.split("/", 1)[0]
        category, custom = comfy_category(folder)
        for r in inner.records:
            rel = f"{link.rel}/{r.rel}"
            status, detail = r.status, r.detail
            if status is Status.UNCATEGORISED:     # directly behind the link: inside its category folder
                status, detail = classify(rel, os.stat_result((stat.S_IFREG | r.mode, 0, 0, 0, 0, 0, r.size, 0, 0, 0)))
            extra.append(r._replace(root=scan.root, rel=rel, folder=folder, category=category,
                                    custom=custom, status=status, detail=detail))
    if not extra:
        return scan
    return scan._replace(records=scan.records + tuple(extra), problems=tuple(problems))


def read_yaml(path: Optional[str]) -> Optional[str]:
    if path is None:
        return None
    if not os.path.isdir(os.path.dirname(path)):     # else the run would place every file, then fail here
        raise BadInput(f"the folder of {path} does not exist", "check the --yaml path (ComfyUI reads "
                       "<its folder>/extra_model_paths.yaml)")
    try:
        data = fsops.read_file(fsops.through_link(path), 4 << 20)
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}", "check the --yaml path")
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"{path} is not UTF-8 text", "fix or remove the file, then run again")


def scan_roots(roots: Sequence[str]) -> List[ScanResult]:
    return [scan_tree(r) for r in roots]


def gather(
    sources: Sequence[str], target: str, yaml_path: Optional[str], cache: Optional[DigestCache],
    on_total: Optional[Callable[[int], None]] = None, on_bytes: Optional[Callable[[int], None]] = None,
    verdicts=None, include_suspect: bool = False, models_dir: Optional[str] = None, launch=None,
    copy_reads: bool = False,
) -> Facts:
    """verdicts: a sniff.VerdictCache (None: no cache). Broken or suspect files are held back
    (status SUSPECT: never hashed, never moved) unless include_suspect. launch: how ComfyUI is
    started (launch.Launch: its models folder, the other YAMLs it reads, its output folders).
    copy_reads: a run will execute this plan, so a file it can only copy is read twice (here for
    xxh3, by the copy for xxh3 again): into a store whose writes wait on a daemon or a network
    (fsops.writes_wait), SHA-256 and BLAKE3 are then left to the copy's read, where they run while
    the store waits for the writes (`copy_bound`)."""
    from migrate.disk.sniff import check_sources
    started = time.time_ns()
    planning.check_roots([os.path.realpath(s) for s in sources], os.path.realpath(target))
    check_writable(target)
    yaml_before = read_yaml(yaml_path)
    scans, findings = check_sources(scan_roots(sources), verdicts, cache, include_suspect)
    target_scan = scan_tree(target) if os.path.isdir(target) else None
    if target_scan is not None:
        target_scan = through_links(target_scan)
    # A stored file can only share content with a source file of the same size: the store (which
    # grows with every pod) is hashed only where sizes meet, as duplicate finders do; and only
    # where neither this machine's digest cache nor the store's catalogue (which every pod sees)
    # knows it. The catalogue is read only when the cache misses: a warm re-plan pays nothing for it.
    sizes = {r.size for s in scans for r in s.records if r.status is Status.MIGRATE}
    cat: store_catalogue.Catalogue = {}
    cat_warning, hits = "", 0
    if target_scan is not None and any(
            r.status is Status.MIGRATE and r.size in sizes and (cache is None or cache.get(r.stamp) is None)
            for r in target_scan.records):
        cat, cat_warning = store_catalogue.load(target)
        target_scan, hits = _from_catalogue(target_scan, cat)
        if cache is not None:      # the next plan on this machine then needs no catalogue
            for r in target_scan.records:
                if r.digest is not None and cache.get(r.stamp) is None:
                    cache.put(r.stamp, r.digest, started)

    # A stored file under a name a source file would take is read too: the plan says which bytes
    # that name loads before and after (name changes), digests included.
    taken = {os.path.relpath(planning.target_path(target, r), target) for s in scans for r in s.records
             if r.category and r.status is not Status.SYMLINK}

    world, found_outside = gather_world(scans, target_scan, target, yaml_path, yaml_before, models_dir, cache,
                                        launch)
    taken |= {r.rel for r in (target_scan.records if target_scan else ()) if (r.category, r.name) in found_outside}

    def wanted(r) -> bool:
        return (r.size in sizes or r.rel in taken) and r.digest is None

    if on_total is not None:
        on_total(sum(r.size for s in scans for r in s.records if r.status is Status.MIGRATE)
                 + sum(r.size for r in (target_scan.records if target_scan else ())
                       if r.status is Status.MIGRATE and wanted(r)))
    # Probed before anything is read: where mtimes move while a file is read (rclone), a file is
    # recognised while it is hashed by device, inode and size (hashing.TimesMove).
    probes = tuple(fsops.probe_between(s.root, target) for s in scans)
    target_fs, probes = weakest_facts(target, fsops.probe_fs(target), probes)
    bound = copy_bound(scans, target_scan) if copy_reads and fsops.writes_wait(target_fs.fstype) else None
    scans = [hash_records(s, cache, on_bytes, times_move=not p.fs.stable_mtime,
                          light=bound if bound is not None and not (p.hardlink or p.rename) else None)
             for s, p in zip(scans, probes)]
    if target_scan is not None:
        target_scan = hash_records(target_scan, cache, on_bytes, only=wanted, times_move=not target_fs.stable_mtime)
    layers: Dict[str, str] = {}
    container_free = None
    for s, p in zip(scans, probes):
        if p.fs.overlay is not None:
            layers.update(overlay_layers(s, p.fs.overlay))
            container_free = fsops.free_space(s.root)
    used = state_bytes(target, [s.root for s in scans], yaml_path)
    return Facts(tuple(scans), target, target_scan, probes, target_fs.hardlink,
                 yaml_path, yaml_before, fsops.free_space(target), tuple(findings), cat, cat_warning, hits,
                 started, world=world, target_fs=target_fs, layers=layers,
                 container_free=container_free, state_bytes=used, launch=launch,
                 store_dirs=top_folders(target))


def copy_bound(scans, target_scan) -> Callable:
    """Which source records a run surely copies, if it moves them at all (from a source whose probe
    found neither a link nor a rename into the store): those whose size no other source file and no
    stored file has. Such a file cannot be a duplicate of anything, so no plan reads its SHA-256 or
    BLAKE3 before the copy (a dedupe never removes it); a file whose size meets another's is a
    candidate and gets all three here, as the plan may drop it for a stored copy instead."""
    seen = Counter(r.size for s in scans for r in s.records if r.status is Status.MIGRATE)
    stored = {r.size for r in (target_scan.records if target_scan is not None else ())}
    return lambda r: seen[r.size] == 1 and r.size not in stored


def top_folders(target: str) -> frozenset:
    """The names of the folders (or symlinks to folders) at the store's top; empty where it is missing."""
    try:
        with os.scandir(target) as it:
            return frozenset(e.name for e in it if e.is_dir())
    except OSError:
        return frozenset()


def weakest_facts(target: str, target_fs: FsFacts, probes: Sequence[Probe]) -> Tuple[FsFacts, Tuple[Probe, ...]]:
    """The store's probe, and those of sources on the store's own filesystem, no stronger than the
    weakest facts earlier probes of the store found (fsops.seen_facts; kept by each run): rclone's
    inode numbers survive one probe's renames and not the next's, so one lucky probe proves nothing."""
    from migrate.disk.identity import weakest
    seen = fsops.seen_facts(target)
    if seen is None:
        return target_fs, tuple(probes)
    try:
        dev = os.stat(fsops.nearest_existing(target)).st_dev
    except OSError:
        return target_fs, tuple(probes)
    out = []
    merged = weakest(seen, fsops.fs_doc(target_fs))
    for p in probes:
        try:
            same = os.stat(p.source).st_dev == dev
        except OSError:
            same = False
        out.append(p._replace(fs=fsops.weaken(p.fs, merged)) if same else p)
    return fsops.weaken(target_fs, merged), tuple(out)


def gather_world(scans: Sequence[ScanResult], target_scan: Optional[ScanResult], target: str,
                 yaml_path: Optional[str], yaml_before: Optional[str], models_dir: Optional[str],
                 cache: Optional[DigestCache], launch=None) -> Tuple[Optional[planning.World], set]:
    """What the plan's name resolver needs beyond the scans: real paths of the roots, ComfyUI's
    models folder, and the files the user's own YAML folders hold under the names of the sources
    and the store (stat only; read when a file of that name has the same size), plus the files
    symlinks in the sources lead to outside them. Also the (category, name)s found out there
    (a stored file of such a name is read: the plan gives its digest)."""
    if yaml_path is None:
        return None, set()
    from migrate.core import comfy, names
    from migrate.disk.hashing import hash_path, stamp
    as_read = os.path.join(os.path.realpath(os.path.dirname(yaml_path)), os.path.basename(yaml_path))
    if launch is not None:
        models_dir = launch.models
    models = os.path.realpath(models_dir or os.path.join(os.path.dirname(as_read), "models"))
    # The YAML written is matched through symlinks (a --yaml that is one of --extra-model-paths-config's).
    same = os.path.realpath(as_read)
    yamls = tuple((as_read, yaml_before) if os.path.realpath(p) == same else (p, read_yaml(p))
                  for p in (launch.yamls if launch else ()))
    output = tuple(launch.output_folders()) if launch is not None else ()
    roots = [s.root for s in scans] + [target]
    # A symlinked folder of the store is listed under the store's name (through_links), so a path
    # behind it (a YAML folder, an absolute link text, a file run places there) means that name.
    # (Not one leading into a source: the source's own names hold there.)
    sources_real = [real_path(s.root) for s in scans]
    aliases = tuple((real_path(r), r) for r in roots) + tuple(
        (real, given) for real, given in (symlinked_folders(target_scan) if target_scan is not None else ())
        if not any(real == s or real.startswith(s.rstrip("/") + "/") for s in sources_real))
    order = comfy.search_folders(planning._yamls(planning.World(yamls=yamls), as_read, yaml_before), models,
                                 output=output)
    all_scans = list(scans) + ([target_scan] if target_scan is not None else [])
    sizes: dict = {}
    for s in all_scans:
        for r in s.records:
            if r.category and r.status is not Status.SPECIAL:
                sizes.setdefault((r.category, r.name), set()).add(r.size)
    by_cat: dict = {}
    for (cat, name), ss in sizes.items():
        by_cat.setdefault(cat, []).append((name, ss))
    view = names.View({}, roots, aliases)
    outside: dict = {}

    hits: set = set()

    def probe(p: str, want_sizes) -> bool:
        try:
            st = os.stat(p)
        except (OSError, ValueError):
            return False
        if not os.path.isfile(p):
            return False
        digest = None
        if st.st_size in want_sizes:
            s_ = stamp(st)
            digest = cache.get(s_) if cache is not None else None
            if digest is None:
                try:
                    digest = hash_path(p, s_)
                except OSError:
                    return False
                if cache is not None:
                    cache.put(s_, digest, time.time_ns())
        outside[p] = names.Node("file", st.st_size, digest, None)
        return True

    for cat, folders in order.items():
        for f in folders:
            f = view.canon(f)
            if any(f == r or f.startswith(r.rstrip("/") + "/") for r in roots):
                continue
            for name, ss in by_cat.get(canonical(cat), ()):
                if probe(os.path.join(f, name), ss):
                    hits.add((canonical(cat), name))
    tree = {r.path: names.Node("link", 0, None, r.link_target) for s in all_scans for r in s.records
            if r.status is Status.SYMLINK}
    linked = names.View(tree, roots, aliases)
    for p in tree:
        end = linked.final(p)
        if end and end not in tree and not any(end == r or end.startswith(r.rstrip("/") + "/") for r in roots):
            probe(end, ())
    if cache is not None:
        cache.save()
    return planning.World(models, aliases, outside, as_read, yamls, output), hits


def canonical(cat: str) -> str:
    from migrate.core.comfy import canonical_key
    return canonical_key(cat)



def overlay_layers(scan: ScanResult, upper: str) -> Dict[str, str]:
    """path -> plan.LOWER for each file of an overlay source that a read-only image layer holds,
    -> plan.UNKNOWN where that cannot be told; files of the writable layer are left out. Where the
    upper layer is visible here (the host), a file whose name is not in it is LOWER; inside a
    container (never seeing the host's folders) the kernel's file handle of each file says which
    layer holds it (fsops.overlay_layer); without one (fuse-overlayfs, older kernels) UNKNOWN."""
    out: Dict[str, str] = {}
    point = fsops.mount_entry(scan.root)[0]
    for r in scan.records:
        if r.status is not Status.MIGRATE:
            continue
        if not upper:
            layer = fsops.overlay_layer(r.path)
            if layer != "upper":
                out[r.path] = planning.LOWER if layer == "lower" else planning.UNKNOWN
            continue
        rel = os.path.relpath(os.path.realpath(r.path), point)
        try:
            st = os.lstat(os.path.join(upper, rel))
            in_upper = stat.S_ISREG(st.st_mode)     # a whiteout is a character device
        except OSError:
            in_upper = False
        if not in_upper:
            out[r.path] = planning.LOWER
    return out


def mount_of(path: str) -> str:
    """The mount point holding `path` (or its nearest existing folder): what moves with a volume."""
    p = os.path.realpath(path)
    while not os.path.exists(p):
        p = os.path.dirname(p)
    while not os.path.ismount(p):
        p = os.path.dirname(p)
    return p


def real_path(path: str) -> str:
    """realpath of a folder that may not exist yet: its nearest existing folder resolved, the rest kept."""
    head, tail = path, ""
    while not os.path.exists(head) and head != os.path.dirname(head):
        head, tail = os.path.dirname(head), os.path.join(os.path.basename(head), tail)
    return os.path.normpath(os.path.join(os.path.realpath(head), tail))


def path_facts(yaml_path: Optional[str], target: str, base_path: str) -> Optional[PathFacts]:
    """Where the YAML and the target really are, and the value of --base-path env:VAR's variable."""
    if yaml_path is None:
        return None
    name = base_path[4:] if base_path.startswith("env:") else None
    yaml_dir = os.path.dirname(yaml_path)
    return PathFacts(yaml_dir=real_path(yaml_dir), target=real_path(target), yaml_mount=mount_of(yaml_dir),
                     target_mount=mount_of(target), env_name=name,
                     env_value=os.environ.get(name) if name else None)


def make_plan(facts: Facts, policy: Policy) -> Plan:
    """The plan, checked by the preflight against every path run will touch (see preflight.py)."""
    from migrate.core import comfy, preflight
    if policy.base_path is None:        # no --base-path: the form the YAML has (a portable one stays so)
        policy = policy._replace(base_path=comfy.kept_base_spec(facts.yaml_before, facts.yaml_path or ""))
    plan = planning.build_plan(facts.sources, facts.target_scan, facts.target, policy, facts.probes,
                               facts.target_hardlinks, facts.yaml_path, facts.yaml_before, facts.free_bytes,
                               paths=path_facts(facts.yaml_path, facts.target, policy.base_path),
                               world=facts.world, target_fs=facts.target_fs, layers=facts.layers,
                               container_free=facts.container_free, state_bytes=facts.state_bytes,
                               store_dirs=facts.store_dirs)
    plan = plan._replace(findings=facts.findings, resumed=interrupted_placements(facts), launch=facts.launch)
    yaml_real = os.path.realpath(facts.yaml_path) if facts.yaml_path else None
    return preflight.check(plan, preflight_facts(preflight.paths_to_check(plan, yaml_real)), yaml_real)


def state_bytes(target: str, sources: Sequence[str], yaml_path: Optional[str]) -> int:
    """The space our own files in the store take already, of those the plan's reserve counts
    (storerules.reserve): the state folders, the lock, the rollback reserve, the catalogue, and
    the log of this pod's interrupted run (which `run` continues). Old runs' logs do not count."""
    from migrate.core.errors import BadLog
    from migrate.disk.runlog import find_interrupted
    from migrate.core.model import STATE_DIR
    from migrate.core.storerules import STATE_PATHS
    paths = [os.path.join(target, STATE_DIR, p) for p in STATE_PATHS]
    try:
        log = find_interrupted(target, list(sources), yaml_path)
    except (OSError, BadLog):       # a damaged log is for run and rollback to refuse, not for this count
        log = None
    if log is not None:
        paths.append(log)
    total = 0
    for p in paths:
        try:
            total += os.lstat(p).st_blocks * 512
        except OSError:
            continue
    return total


def interrupted_placements(facts: Facts):
    """(run id, store paths it placed) of this pod's interrupted run, which `run` continues: those
    files are in the store because of that run, not deduplication (None without one)."""
    from migrate.core.errors import BadLog
    from migrate.disk.runlog import find_interrupted
    from migrate.disk.journal import load_log
    from migrate.core.records import group_steps
    from migrate.core.steps import STORES_SOURCE
    try:
        log = find_interrupted(facts.target, [s.root for s in facts.sources], facts.yaml_path)
        if log is None:
            return None
        records = load_log(log)
    except (OSError, BadLog):
        return None
    steps = group_steps(records)
    placed = tuple(sorted(b.dst for b in steps.begins if b.dst and b.step in steps.done and b.op in STORES_SOURCE))
    return (getattr(records[0], "run", ""), placed)


def path_fact(path: str) -> PathFact:
    """What `path` is now, for the preflight: its kind from lstat; for a folder (or a symlink to one)
    whether it takes new names (access(2), which also says no for an immutable folder, even to
    root), its mount's read-only flag and name limit (statvfs)."""
    try:
        st = os.lstat(path)
    except OSError:          # missing, or a file on the way (ENOTDIR): the parent's fact says which
        return PathFact("missing")
    to = ""
    if stat.S_ISLNK(st.st_mode):
        try:
            to = os.readlink(path)
            st = os.stat(path)
        except OSError:
            return PathFact("symlink-dangling", to)
        if not stat.S_ISDIR(st.st_mode):
            return PathFact("symlink-other", to)
        kind = "symlink-dir"
    elif stat.S_ISDIR(st.st_mode):
        kind = "dir"
    else:
        return PathFact("file" if stat.S_ISREG(st.st_mode) else "other")
    # Per folder, not per device: a read-only bind mount shares its device number with the
    # read-write tree it comes from (folders only reach here: a few statvfs calls per plan).
    try:
        v = os.statvfs(path)
        ro, limit = bool(v.f_flag & os.ST_RDONLY), v.f_namemax or 255
    except OSError:
        ro, limit = False, 255
    return PathFact(kind, to, not ro and os.access(path, os.W_OK | os.X_OK), ro, limit)


def preflight_facts(paths: Sequence[str]) -> dict:
    return {p: path_fact(p) for p in paths}


def confirm_beliefs(plan: Plan, caches: Sequence[Optional[DigestCache]] = ()) -> List[str]:
    """Bytes, not beliefs: every source the plan would set aside because the store already holds its
    content (already there, same content) must have that content now, and so must the stored file
    it would then load under its name, each by a read of this process. A digest this process read
    from the file as it is now counts; one from the digest cache, the catalogue or a log is checked
    by reading the file (a stored file shared by many names once). Returns the sources whose bytes,
    or whose stored copy's, differ (or that changed meanwhile). Every digest read here goes into
    `caches` (the re-plan's memo, so planning again sees the truth, and the digest cache, so the
    next plan does)."""
    from migrate.disk.hashing import digest_now
    from migrate.core.model import ActionKind, Removal

    def remember(s, got: str, at: int) -> None:
        for cache in caches:
            if cache is not None:
                cache.put(s, got, at)

    def digest_of(path: str) -> Optional[str]:
        try:
            return digest_now(path, remember)
        except OSError:
            return None

    # A stored copy this run itself places comes from another source: that source's bytes are what
    # will be stored (a link moves them as they are; a copy is verified against the same digest).
    placing = {a.dst: a.source for a in plan.actions
               if a.dst and a.kind in (ActionKind.MOVE, ActionKind.COPY, ActionKind.LINK) and a.method.value != "none"}
    stale = []
    for a in plan.actions:
        if a.kind not in (ActionKind.ALREADY_THERE, ActionKind.SAME_CONTENT) or a.removal is not Removal.QUARANTINE:
            continue
        held = placing.get(a.stored, a.stored) if a.stored else None
        if digest_of(a.source) != a.digest or (held and digest_of(held) != a.digest):
            stale.append(a.source)
    for cache in caches:
        if cache is not None:
            cache.save()
    return stale


def loaded_models(order: dict, gguf: bool = False) -> dict:
    """(category, name) -> (the file ComfyUI loads for it, its size), for every name ComfyUI lists:
    the names below each category's folders (walked as ComfyUI walks them: recursively, following
    symlinked folders, skipping .git), each resolved by names.first_holder (ComfyUI's get_full_path:
    the first folder in search order holding a regular file or a symlink to one). Reads folders only.
    A folder reached again through a symlink loop (`loras/self -> .`) is walked once. gguf: also the
    .gguf files ComfyUI-GGUF lists in diffusion_models and text_encoders."""
    from migrate.core import comfy
    from migrate.core.names import first_holder
    from migrate.core.workflows import GGUF_CATEGORIES
    out: dict = {}
    for cat, folders in order.items():
        names = set()
        for folder in folders:
            seen = set()
            for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
                try:
                    st = os.stat(dirpath)
                except OSError:
                    dirnames[:] = []
                    continue
                if (st.st_dev, st.st_ino) in seen:
                    dirnames[:] = []
                    continue
                seen.add((st.st_dev, st.st_ino))
                dirnames[:] = [d for d in dirnames if d != ".git"]
                rel_dir = os.path.relpath(dirpath, folder)
                names.update(f if rel_dir == "." else f"{rel_dir}/{f}" for f in filenames)
        for name in sorted(n for n in names if comfy.lists_extension(cat, n)
                           or (gguf and cat in GGUF_CATEGORIES and n.lower().endswith(".gguf"))):
            path = first_holder(folders, name, os.path.isfile)
            if path is not None:
                try:
                    out[(cat, name)] = (path, os.stat(path).st_size)
                except OSError:
                    continue
    return out


def model_identities(before: dict) -> dict:
    """(category, name) -> (device, inode) of the bytes ComfyUI loads, or None for a symlink (its
    bytes are its target's): what the unused list counts once per inode."""
    out = {}
    for key, (path, _size) in before.items():
        try:
            st = os.lstat(path)
            out[key] = None if stat.S_ISLNK(st.st_mode) else (st.st_dev, st.st_ino)
        except OSError:
            out[key] = None
    return out


WORKFLOW_LIMIT = 64 << 20      # bytes read of one workflow file (a huge one is reported, not read)
# The folders of a custom-node pack ComfyUI 0.33 serves as templates (app/custom_node_manager.py:
# `<custom_nodes folder>/*/<name>/*.json`, one level, as glob lists them: no hidden pack).
NODE_EXAMPLE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")
TEMPLATES_DIST = "comfyui_workflow_templates"


def find_workflows(home: str, user: Optional[str] = None) -> List[str]:
    """The pod's saved workflows: <ComfyUI>/user/<user>/workflows/**/*.json (`user`: ComfyUI's user
    folder when it is started with another, launch.Launch.user), every user, sorted."""
    user = user or os.path.join(home, "user")
    out = []
    for u in _listdir(user):
        top = os.path.join(user, u, "workflows")
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            out.extend(os.path.join(dirpath, f) for f in filenames if f.lower().endswith(".json"))
    return sorted(out)


def _listdir(folder: str) -> List[str]:
    try:
        return sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    except OSError:
        return []


def _json_files(folder: str) -> List[str]:
    """The `*.json` names in one folder, as glob lists them (no hidden name; a folder named x.json too:
    it is then reported unreadable, as ComfyUI would fail to serve it)."""
    return [os.path.join(folder, f) for f in _listdir(folder) if f.lower().endswith(".json") and not f.startswith(".")]


def custom_node_folders(home: str, order: dict, launch=None) -> List[str]:
    """ComfyUI's custom_nodes folders: <base>/custom_nodes first, then any a YAML adds (`custom_nodes:`)."""
    base = launch.base if launch is not None else home
    return list(dict.fromkeys([os.path.join(base, "custom_nodes")] + list(order.get("custom_nodes", ()))))


def find_node_examples(folders: Sequence[str]) -> List[str]:
    """The example workflows custom-node packs ship, as ComfyUI 0.33 lists them for its Templates
    menu: <custom_nodes>/<pack>/{example_workflows,example,examples,workflow,workflows}/*.json."""
    out = []
    for top in folders:
        for pack in _listdir(top):
            if pack.startswith("."):
                continue
            for sub in NODE_EXAMPLE_FOLDERS:
                out.extend(_json_files(os.path.join(top, pack, sub)))
    return out


def find_blueprints(home: str, user: str, node_folders: Sequence[str], comfyui: Optional[str] = None) -> List[str]:
    """Subgraph blueprints, which the node library offers as nodes (ComfyUI 0.33 app/subgraph_manager.py
    and its frontend): each user's `<user>/<name>/subgraphs/**/*.json` (saved with 'publish subgraph'),
    `<custom_nodes>/*/subgraphs/*.json` and ComfyUI's own `<ComfyUI>/blueprints/*.json`."""
    out = []
    for u in _listdir(user):
        for dirpath, dirnames, filenames in os.walk(os.path.join(user, u, "subgraphs")):
            dirnames.sort()
            out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(".json"))
    for top in node_folders:
        for pack in _listdir(top):
            if not pack.startswith("."):
                out.extend(_json_files(os.path.join(top, pack, "subgraphs")))
    return out + _json_files(os.path.join(os.path.realpath(comfyui or home), "blueprints"))


def python_prefixes(home: str, proc: str = "/proc") -> List[str]:
    """The Python environments ComfyUI may run in: the running ComfyUI's own (the Python its command
    line names, or its VIRTUAL_ENV), then each venv (a folder with pyvenv.cfg) in the ComfyUI folder
    or beside it (`.venv`, `venv`, `.venv-cu128`, ...). Reads only."""
    from migrate.disk.running import find_running
    out = []
    for r in find_running(home, proc):
        try:
            with open(os.path.join(proc, str(r.pid), "cmdline"), "rb") as f:
                argv0 = f.read().split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if "/" in argv0:
                out.append(os.path.dirname(os.path.dirname(os.path.join(r.cwd or "/", argv0))))
            with open(os.path.join(proc, str(r.pid), "environ"), "rb") as f:
                env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
            if env.get(b"VIRTUAL_ENV"):
                out.append(env[b"VIRTUAL_ENV"].decode("utf-8", "surrogateescape"))
        except OSError:
            continue
    for parent in (home, os.path.dirname(os.path.abspath(home))):
        out.extend(os.path.join(parent, d) for d in _listdir(parent)
                   if os.path.isfile(os.path.join(parent, d, "pyvenv.cfg")))
    return list(dict.fromkeys(os.path.normpath(p) for p in out))


def _dist_version(site: str, dist: str) -> Optional[str]:
    for d in _listdir(site):
        if d.lower().startswith(dist + "-") and d.endswith(".dist-info"):
            try:
                with open(os.path.join(site, d, "METADATA"), encoding="utf-8", errors="replace") as f:
                    for line in f:
                        if line.startswith("Version:"):
                            return line.split(":", 1)[1].strip()
                        if not line.strip():
                            break
            except OSError:
                pass
            return d[len(dist) + 1:-len(".dist-info")]
    return None


def _legacy_templates(version: Optional[str]) -> bool:
    """ComfyUI 0.33 serves comfyui_workflow_templates/templates/ below 0.3.0 (or an unreadable
    version), else the JSON package's templates (server.py, frontend_management.py)."""
    try:
        return tuple(int(x) for x in version.split(".")[:2]) < (0, 3)
    except (AttributeError, ValueError):
        return True


def find_templates(prefixes: Sequence[str]) -> Tuple[List[str], str]:
    """ComfyUI's own templates (PyPI comfyui-workflow-templates) in the first environment that has the
    package: (the template files, a note naming the package version and folder, or where we looked)."""
    import glob
    for prefix in prefixes:
        for site in sorted(glob.glob(os.path.join(glob.escape(prefix), "lib*", "python3*", "site-packages"))):
            version = _dist_version(site, TEMPLATES_DIST)
            legacy = os.path.join(site, TEMPLATES_DIST, "templates")
            split = os.path.join(site, TEMPLATES_DIST + "_json", "templates")
            if version is None and not os.path.isdir(legacy) and not os.path.isdir(split):
                continue
            if version is None:         # no meta package to say which: the folder that is there
                folder = split if os.path.isdir(split) else legacy
            else:
                folder = legacy if _legacy_templates(version) else split
            files = _json_files(folder)
            return files, f"comfyui-workflow-templates {version or '(version unknown)'} in {folder}"
    return [], "not found: no comfyui-workflow-templates in " + (
        ", ".join(prefixes) if prefixes else "a venv in or beside the ComfyUI folder, nor a running ComfyUI's Python")


def _read_workflow(path: str, names: dict, source: str):
    from migrate.core import workflows as wf
    try:
        data = fsops.read_file(path, WORKFLOW_LIMIT)
        text = (data or b"").decode("utf-8-sig")     # a browser's JSON reader drops a UTF-8 BOM too
    except UnicodeDecodeError as exc:
        return wf.Workflow(path, "unreadable", (), f"not UTF-8 text (a bad byte at offset {exc.start})", source)
    except OSError as exc:
        why = f"larger than {WORKFLOW_LIMIT >> 20} MiB: not read" if exc.errno == errno.EFBIG else \
            f"cannot read: {exc.strerror or exc}"
        return wf.Workflow(path, "unreadable", (), why, source)
    try:
        return wf.assign_categories(wf.parse_workflow(path, text), names)._replace(source=source)
    except (RecursionError, MemoryError, ValueError, TypeError) as exc:     # one bad file never stops a run
        return wf.Workflow(path, "unreadable", (), f"cannot read: {type(exc).__name__}", source)


def gather_workflows(home: str, order: dict, user: Optional[str] = None, launch=None, proc: str = "/proc"):
    """(workflows with categories, what ComfyUI loads for each name now, the sources read). Every place a
    model can be named: the saved workflows of every user, the example workflows custom-node packs
    ship, ComfyUI's own templates. Reads, never writes."""
    from migrate.core import workflows as wf
    before = loaded_models(order, gguf=True)
    names: dict = {}
    for cat, name in before:
        names.setdefault(cat, set()).add(name)
    user = user or os.path.join(home, "user")
    nodes = custom_node_folders(home, order, launch)
    templates, note = find_templates(python_prefixes(home, proc))
    sources = [wf.Source("user", "saved workflows", os.path.join(user, "*", "workflows"), find_workflows(home, user)),
               wf.Source("custom_nodes", "custom-node example workflows", ", ".join(nodes), find_node_examples(nodes)),
               wf.Source("templates", "ComfyUI's templates", note, templates),
               wf.Source("blueprints", "subgraph blueprints",
                         f"{os.path.join(user, '*', 'subgraphs')}, <custom_nodes>/*/subgraphs, "
                         f"{os.path.join(os.path.realpath(launch.comfyui if launch else home), 'blueprints')}",
                         find_blueprints(home, user, nodes, launch.comfyui if launch else None))]
    out, read = [], []
    for s in sources:
        flows = [_read_workflow(path, names, s.kind) for path in s.files]
        # Beside templates lie JSON files that are no workflow (the menu's index*.json, fuse_options.json):
        # ComfyUI lists them as no template either. A saved workflow of that shape is reported, not dropped.
        flows = [w for w in flows if s.kind == "user" or not w.error.startswith(wf.NOT_A_WORKFLOW)]
        out += flows
        read.append(s._replace(files=[w.path for w in flows]))
    return out, before, read
