"""PURE: scans + probes + YAML text + policy -> Plan. No I/O here: `--dry-run` is this value.

Rules, in order, for each source file (sources in the order given; inside one, files in ComfyUI's
search order, so the file ComfyUI loads today is the one that keeps its name):
- not a complete model file -> skip, with the reason;
- its target name already holds the same content -> already there (the source copy is redundant);
- its target name holds other content -> conflict (never overwritten; or renamed with a suffix);
- its content is stored (or planned) under another name -> same content: this name becomes a link;
- else it is placed by the mode: move (hardlink then unlink, rename, or copy+verify), link, or copy.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from collections import namedtuple

from migrate.core import comfy, names, storerules
from migrate.core.storerules import CASE_CLASH, HIDDEN_LINK, NAME_REFUSED, stay_kind
from migrate.core.errors import BadInput
from migrate.core.model import (
    UNPROBED, Action, ActionKind, CustomFolder, FileRecord, FsFacts, Method, Mode, OnConflict, PathFacts, Plan,
    Policy, Probe, Removal, ScanResult, Status,
)

# The layer of an overlay source's file (facts.overlay_layers): only these two are ever given.
LOWER = "lower"         # in a read-only image layer: renaming it copies the whole file onto the container disk
UNKNOWN = "unknown"     # the overlay's layers cannot be told apart here: it may be
LOWER_STAYS = ("in a read-only image layer of the container disk: setting it aside would copy it "
               "up onto the container disk and removing it frees nothing; it stays (the store is searched first)")
UNKNOWN_STAYS = ("on an overlay whose layers cannot be told apart from here (fuse-overlayfs, or a kernel "
                 "without overlay file handles): it may be in a read-only image layer, where setting it aside "
                 "would copy it up onto the container disk; it stays (the store is searched first)")


def check_roots(sources: Sequence[str], target: str) -> None:
    """Refuse overlapping trees (paths already resolved by the caller)."""
    def inside(a: str, b: str) -> bool:
        return a == b or a.startswith(b.rstrip("/") + "/")

    for s in sources:
        if s == target:     # e.g. ComfyUI/models is a symlink to the store, as RunPod templates make it
            raise BadInput(f"the source and the target are the same folder {target} (--target names ComfyUI's "
                           "models folder, or one is a symlink to the other): ComfyUI already loads its models "
                           "from it", "nothing to migrate; "
                           "to move the models elsewhere, pass another --target")
        if inside(target, s):
            raise BadInput(f"the target {target} is inside the source {s}",
                           "choose a target outside ComfyUI's models folder")
        if inside(s, target):
            raise BadInput(f"the source {s} is inside the target {target}", "choose another --target")
    for i, a in enumerate(sources):
        for b in sources[i + 1:]:
            if a == b:      # the shell names the spellings (pod.check_given_once); a caller of ours may not
                raise BadInput(f"the same folder {a} is given twice as a source", "give each models tree once")
            if inside(a, b) or inside(b, a):
                inner, outer = (a, b) if inside(a, b) else (b, a)
                raise BadInput(f"sources overlap: {inner} is inside {outer}, so its files would be migrated twice",
                               f"give each models tree once: pass --source {outer} alone (it holds {inner})")


class World(namedtuple("World", [
    "models_dir",                 # str | None: ComfyUI's own models folder, real path (None: unknown)
    "aliases",                    # tuple[(real path, path as scanned), ...] of the scanned roots
                                  # and of the store's symlinked folders (facts.symlinked_folders)
    "outside",                    # dict[str, names.Node]: files at candidate names in folders of the
                                  # user's YAML outside the scanned roots, and link targets out there
    "yaml_real",                  # str | None: the YAML's path as ComfyUI reads it (real folder)
    "yamls",                      # tuple[(path, text), ...]: every other YAML ComfyUI reads, in its
                                  # order (the written one by yaml_real: its text is the plan's)
    "output",                     # tuple[(category, folder), ...]: the output folders main.py adds
], defaults=(None, (), None, None, (), ()))):
    """What the resolver needs beyond the scans (gathered by facts.gather_world)."""

    __slots__ = ()


def target_path(target: str, r: FileRecord) -> str:
    folder = r.category if r.category and not r.custom else r.folder
    return posixpath.join(target, folder, r.name)


def _search_rank(r: FileRecord) -> Tuple:
    folders = comfy.CATEGORIES.get(r.category or "", ((r.folder,), None))[0]
    idx = folders.index(r.folder) if r.folder in folders else len(folders)
    return (r.category or "", idx, r.rel)


def _conflict_name(dst: str, taken, fs: FsFacts = UNPROBED) -> str:
    """`<stem>.conflict-N<ext>`, the stem shortened (on a character boundary) so that the name fits
    the store's filesystem (its limit, in its unit); `taken(path)`: whether the store has that name."""
    folder, base = posixpath.split(dst)
    stem, ext = posixpath.splitext(base)
    n = 1
    while True:
        name = posixpath.join(folder, storerules.shorten(stem, f".conflict-{n}{ext}", fs))
        if not taken(name):
            return name
        n += 1


@dataclass
class _Slot:
    digest: Optional[str]
    inode: Optional[Tuple[int, int]]    # (dev, ino) the name will have, when known
    path: str = ""                      # the name as spelled (a case-insensitive store keys by its fold)


class _Slots(dict):
    """Target path -> what it holds (now or after the plan), keyed as the store finds names: on a
    case-insensitive store `Style.pt` and `style.pt` are one name (storerules.fold)."""

    def __init__(self, fs: FsFacts) -> None:
        super().__init__()
        self.key = storerules.key_of(fs)

    def find(self, path: str) -> Optional[_Slot]:
        return self.get(self.key(path))

    def put(self, path: str, slot: _Slot) -> None:
        slot.path = path
        self[self.key(path)] = slot

    def taken(self, path: str) -> bool:
        return self.key(path) in self


def _case_clashes(sources: Sequence[ScanResult], target_scan: Optional[ScanResult], target: str,
                  fs: FsFacts) -> Dict[str, str]:
    """On a case-insensitive store: source path -> another spelling it would be one name with there
    (`loras/Style.pt` and `loras/style.pt`, or a folder `Style/` and `style/`), for each model file
    whose path in the store, or a folder on the way, folds onto a differently spelled one (of
    another source file or of the store). The category folder's own spelling does not count: the
    names ComfyUI shows are relative to it. Empty where case counts."""
    if fs.case_sensitive:
        return {}
    spellings: Dict[str, set] = {}

    def prefixes(rel: str):
        parts = rel.split("/")
        parts[0] = storerules.fold(parts[0])
        return ["/".join(parts[:i]) for i in range(2, len(parts) + 1)]

    for r in (target_scan.records if target_scan else ()):
        for p in prefixes(r.rel):
            spellings.setdefault(storerules.fold(p), set()).add(p)
    mine = []
    for scan in sources:
        for r in scan.records:
            if r.status is Status.MIGRATE:
                rel = posixpath.relpath(target_path(target, r), target)
                mine.append((r.path, rel))
                for p in prefixes(rel):
                    spellings.setdefault(storerules.fold(p), set()).add(p)
    out: Dict[str, str] = {}
    for path, rel in mine:
        for p in prefixes(rel):
            others = sorted(spellings[storerules.fold(p)] - {p})
            if others:
                out[path] = others[0].split("/", 1)[1] + ("/" if p.count("/") != rel.count("/") else "")
                break
    return out


def build_plan(
    sources: Sequence[ScanResult],
    target_scan: Optional[ScanResult],
    target: str,
    policy: Policy,
    probes: Sequence[Probe],
    target_hardlinks: bool,
    yaml_path: Optional[str] = None,
    yaml_before: Optional[str] = None,
    free_bytes: Optional[int] = None,
    paths: Optional[PathFacts] = None,
    world: Optional[World] = None,
    target_fs: FsFacts = UNPROBED,
    layers: Optional[Mapping[str, str]] = None,
    container_free: Optional[int] = None,
    state_bytes: int = 0,
    store_dirs: Optional[frozenset] = None,
) -> Plan:
    """`target_fs`: what the store's filesystem does (fsops.probe_fs); `layers`: source path -> LOWER
    or UNKNOWN for files of overlay sources (facts.overlay_layers); `container_free`: free bytes of
    the overlay sources' upper layer (the container disk). The store's name rules and allocation
    unit come with target_fs (storerules.py); `state_bytes`: the space our own state files in the
    store take already (facts.state_bytes: not reserved again); `store_dirs`: the names of the
    folders at the store's top (None: unknown, no folder is planned)."""
    target_hardlinks = target_hardlinks and target_fs.hardlink
    layers = layers or {}
    if yaml_path is not None and yaml_before is not None:
        comfy.parse_yaml(yaml_before, yaml_path)    # a broken YAML is refused even when nothing moves
    probe_of = {p.source: p for p in probes}
    warnings: List[str] = []
    slots = _Slots(target_fs)               # target path -> what it holds (now or after the plan)
    stored: Dict[str, str] = {}             # digest -> the one stored copy's path
    target_folders: Dict[str, set] = {}
    clashes = _case_clashes(sources, target_scan, target, target_fs)
    for r in (target_scan.records if target_scan else ()):
        path = posixpath.join(target, r.rel)
        slots.put(path, _Slot(r.digest if r.status.migrates else None, (r.dev, r.ino)))
        if r.status.migrates and r.digest and r.digest not in stored:
            stored[r.digest] = path
        if r.category:
            target_folders.setdefault(r.category, set()).add(r.folder)

    # The names of each file the scans found (by device and inode): a file with more names than that
    # has names the scan cannot see.
    names_found: Dict[Tuple[int, int], int] = {}
    for scan in sources:
        for r in scan.records:
            names_found[(r.dev, r.ino)] = names_found.get((r.dev, r.ino), 0) + 1
    actions: List[Action] = []
    for scan in sources:
        probe = probe_of.get(scan.root, Probe(scan.root, False, False))
        if policy.mode is Mode.LINK and not probe.hardlink:
            raise BadInput(f"--mode link: {scan.root} and {target} cannot share hardlinks ({probe.detail})",
                           "use --mode move or --mode copy")
        for r in sorted(scan.records, key=_search_rank):
            if (policy.mode is Mode.MOVE and r.status is Status.MIGRATE and not probe.fs.link_inode
                    and r.nlink > names_found[(r.dev, r.ino)]):
                actions.append(_hidden_link(r, probe.fs))
                continue
            actions.append(_decide(r, target, policy, probe, target_hardlinks, slots, stored, target_folders,
                                   target_fs, layers.get(r.path), clashes.get(r.path)))

    before = _tree(sources, target_scan, target, world, target_fs)
    actions = _relinks(actions, before)
    for a in actions:
        if a.kind is ActionKind.CONFLICT and stay_kind(a) != "conflict":
            warnings.append(f"{stay_kind(a)}: {a.source}: {a.reason}")
        elif a.kind is ActionKind.CONFLICT:
            warnings.append(f"conflict: {a.source}: the store holds other bytes under this name; left in "
                            "place and shadowed (--on-conflict rename stores it as .conflict-N)")
        elif a.kind is not ActionKind.SKIP and a.dst and a.reason.startswith("renamed to "):
            warnings.append(f"renamed (conflict): {a.source} is stored as {posixpath.basename(a.dst)}: its "
                            "name loads the store's other file (a name change)")
    yaml_after = base = None
    made: Tuple[str, ...] = ()
    if yaml_path is not None:
        if target_folders:
            paths = paths or PathFacts(posixpath.dirname(yaml_path), target, "/", "/")
            yaml_after, base, made, said = managed_yaml(yaml_path, yaml_before, target_folders, target,
                                                        policy.base_path or "absolute", paths, store_dirs)
            warnings.extend(said)
    elif any(a.method is not Method.NONE for a in actions):
        warnings.append("no extra_model_paths.yaml given (--comfyui or --yaml): ComfyUI will not see the target")
    changes: Tuple[names.NameChange, ...] = ()
    after: Tuple = ()
    if yaml_path is not None:
        changes, after = _name_changes(actions, before, target, world or World(), yaml_path, yaml_before,
                                       yaml_after if yaml_after is not None else yaml_before)
    if changes:
        warnings.append(f"{len(changes)} name(s) would load other bytes after the run (or nothing): see name changes")
    # Files of an image layer (or of one that may be) are never set aside: nothing is copied up.
    container = sum(a.size for a in actions if a.removal is Removal.QUARANTINE and layers.get(a.source) == UNKNOWN)
    if container:
        warnings.append(f"the overlay's layers are not visible here: setting aside {container} bytes of sources "
                        "may copy them up onto the container disk first (counted against its free space)")
    for layer, where in ((LOWER, "in a read-only image layer"),
                         (UNKNOWN, "on an overlay whose layers cannot be told apart here")):
        staying = [a for a in actions if a.kind is not ActionKind.SKIP and layers.get(a.source) == layer]
        if staying and policy.mode is Mode.MOVE:
            warnings.append(f"{len(staying)} source file(s) {where} stay in place (renaming one would copy it up "
                            "onto the container disk): the store gets its bytes (a copy, or the copy already there) and "
                            "the YAML makes ComfyUI load the store's; nothing on the container disk changes")
    need, reserve = _space_needed(actions, target_scan, target, target_fs, state_bytes)
    # (The empty category folders the YAML lists, store_folders, are not counted: no model goes in
    # them; execute makes them only beside the room kept for the log and a rollback.)
    return Plan(
        space_needed=need, reserve_bytes=reserve,
        name_changes=changes, names_after=after,
        target=target, sources=tuple(s.root for s in sources), yaml_path=yaml_path, yaml_before=yaml_before,
        yaml_after=yaml_after, policy=policy, actions=tuple(actions), probes=tuple(probes),
        target_hardlinks=target_hardlinks, target_categories=tuple(sorted(target_folders)),
        warnings=tuple(warnings), free_bytes=free_bytes,
        custom_folders=_custom_folders(actions, target, policy, yaml_after is not None, before), base_path=base,
        paths=paths if base is not None else None, target_fs=target_fs, container_bytes=container,
        container_free=container_free if container else None, store_folders=made,
    )


def managed_yaml(yaml_path: str, yaml_before: Optional[str], target_folders: Mapping[str, set], target: str,
                 spec: str, paths: PathFacts, store_dirs: Optional[frozenset]
                 ) -> Tuple[str, str, Tuple[str, ...], List[str]]:
    """The YAML with our managed section for a store holding `target_folders` (category -> its
    folders there), as run and attach write it: (the new text, its base_path, the store folders to
    make, warnings). Refuses (BadInput) a YAML whose base_path ComfyUI would not resolve to the target."""
    folders = section_folders(target_folders)
    base = _base_path(spec, target, paths)
    after = comfy.merge_section(yaml_before, comfy.render_section(base, folders), yaml_path)
    _check_resolves(after, spec, target, paths)
    warnings = _typo_warnings(yaml_before or "")
    if yaml_before is not None and comfy.flow_style(yaml_before):
        warnings.append(f"{yaml_path} is written in flow style (JSON-like): its sections are rewritten in "
                        "block style, the same values, so that ours can follow (rollback restores the file)")
    warnings += _portability_warnings(spec, paths)
    return after, base, missing_folders(folders, target, store_dirs), warnings


def section_folders(target_folders: Mapping[str, set]) -> Dict[str, List[str]]:
    """The managed section's folders (names relative to the store): every model category of the
    installed ComfyUI (comfy.CATEGORIES: its folder_paths.py) at its own name in the store, written
    to be searched first, so that what ComfyUI's downloader or ComfyUI-Manager saves later
    (`folder_names_and_paths[category][0][0]`) lands on the volume; every other folder the store
    holds for a category (custom-node folders: `insightface: insightface`) after it; and
    `download_model_base: .`, the store itself (ComfyUI-Manager's base for its own save paths)."""
    folders = {cat: set(fs) for cat, fs in target_folders.items()}
    for cat in comfy.CATEGORIES:
        folders.setdefault(cat, set()).add(cat)
    out = {cat: sorted(fs, key=lambda f: (f != cat, f)) for cat, fs in folders.items()}
    out[comfy.DOWNLOAD_BASE] = ["."]
    return out


def missing_folders(folders: Mapping[str, Sequence[str]], target: str,
                    store_dirs: Optional[frozenset]) -> Tuple[str, ...]:
    """The store folders a section lists that are not there yet (run and attach make them,
    journalled): ComfyUI skips a missing folder, and a download into one would fail."""
    if store_dirs is None:
        return ()
    want = {f.split("/", 1)[0] for fs in folders.values() for f in fs if f not in (".", "")}
    return tuple(posixpath.join(target, f) for f in sorted(want - set(store_dirs)))


def _space_needed(actions: Sequence[Action], target_scan: Optional[ScanResult], target: str,
                  fs: FsFacts, state_bytes: int = 0) -> Tuple[int, int]:
    """(the store space the run needs, the part of it reserved for the run's own files): each copy
    rounded up to the store's allocation unit, a block for each symlink and each new folder, and
    storerules.reserve (the lock, the log and a rollback's records, the catalogue)."""
    block = fs.block
    need = 0
    dsts = []
    for a in actions:
        if a.method is Method.COPY:
            need += storerules.allocation(a.size, block)
        elif a.method is Method.SYMLINK:
            need += block
        if a.dst and a.method is not Method.NONE:
            dsts.append(a.dst)
    existing = {target} if target_scan is not None else set()
    for r in (target_scan.records if target_scan else ()):
        cur = posixpath.dirname(posixpath.join(target, r.rel))
        while cur != target and cur not in existing:
            existing.add(cur)
            cur = posixpath.dirname(cur)
    need += block * storerules.new_folders(dsts, existing, target)
    steps = sum(1 for a in actions if a.method is not Method.NONE or a.removal is not Removal.NONE
                or a.kind is ActionKind.RELINK)
    stored = len(target_scan.records) if target_scan else 0
    reserve = storerules.reserve(block, steps, stored + len(dsts), state_bytes, len(actions))
    return need + reserve, reserve


def _hidden_link(r: FileRecord, fs: FsFacts) -> Action:
    """A model file with more names than the scans found, on a filesystem that shows hardlinked
    names with other inode numbers (mergerfs): which other names are its own cannot be known, so
    moving it would end as separate files after a rollback (the link lost). It stays."""
    return Action(ActionKind.CONFLICT, root=r.root, rel=r.rel, category=r.category, size=r.size, digest=r.digest,
                  dev=r.dev, ino=r.ino, mode=r.mode, mtime_ns=r.mtime_ns,
                  reason=f"{HIDDEN_LINK}s ({r.nlink - 1}) cannot be found: {fs.fstype} shows hardlinked names "
                  "with other inode numbers, so a rollback could not make them one file again; it stays where "
                  "it is (make it a single file on the pod, e.g. copy it over its other names, to move it)")


def _decide(r: FileRecord, target: str, policy: Policy, probe: Probe, target_hardlinks: bool,
            slots: _Slots, stored: Dict[str, str], target_folders: Dict[str, set],
            target_fs: FsFacts = UNPROBED, layer: Optional[str] = None,
            clash: Optional[str] = None) -> Action:
    common = dict(root=r.root, rel=r.rel, category=r.category, size=r.size, digest=r.digest, dev=r.dev,
                  ino=r.ino, mode=r.mode, mtime_ns=r.mtime_ns)
    if r.status is not Status.MIGRATE:
        return Action(ActionKind.SKIP, reason=r.detail or r.status.value, **common)
    move = policy.mode is Mode.MOVE
    link_back = move and (policy.link_back if policy.link_back is not None else r.custom)
    lower = move and layer in (LOWER, UNKNOWN)      # never renamed on the overlay: kept by the YAML only
    stays = LOWER_STAYS if layer == LOWER else UNKNOWN_STAYS
    if lower:
        link_back = False       # the file stays at its place
    elif link_back and not (probe.fs.symlink and probe.fs.up_links):
        # A link back leads out of its folder (`..`, or an absolute path): sshfs refuses those.
        if r.custom:
            return Action(ActionKind.SKIP, reason=f"custom-node folder on a filesystem without symlinks "
                          f"that lead out of their folder ({probe.fs.fstype}): no link could lead its nodes to "
                          "the store, so it stays", **common)
        link_back = False
    # Inode numbers that are not stable (sshfs, mergerfs, rclone) cannot show that the store holds
    # the source's own file: its name is never just unlinked.
    stable = target_fs.stable_inode and probe.fs.stable_inode

    def removal_for(slot_inode) -> Removal:
        if not move or lower:
            return Removal.NONE
        return Removal.UNLINK if stable and slot_inode == (r.dev, r.ino) else Removal.QUARANTINE

    dst = target_path(target, r)
    # The store's own name rules (storerules.py): a name it cannot hold stays on the pod.
    refused = storerules.refused_path(posixpath.relpath(dst, target), target_fs)
    if refused is not None:
        return Action(ActionKind.CONFLICT, dst=dst, reason=f"{NAME_REFUSED}: {refused}; it stays where it is "
                      "(rename it on the pod to move it)", **common)
    # Two spellings that fold together are one name on a case-insensitive store: placing either
    # makes the other name load its bytes there. Both stay (or, with --on-conflict rename, the
    # first keeps the name and the others are renamed; a folder cannot be renamed: they stay).
    if clash is not None and (policy.on_conflict is OnConflict.SKIP or clash.endswith("/")):
        return Action(ActionKind.CONFLICT, dst=dst, reason=f"{CASE_CLASH} {clash!r} on the store's "
                      f"case-insensitive filesystem ({target_fs.fstype}): both stay where they are"
                      + (" (--on-conflict rename keeps both)" if not clash.endswith("/") else ""), **common)
    slot = slots.find(dst)
    if slot is not None and slot.path != dst:
        if slot.path.split("/")[-r.rel.count("/"):] == dst.split("/")[-r.rel.count("/"):]:
            dst = slot.path     # only the category folder is spelled otherwise there: the same name
        else:                   # (only with --on-conflict rename: a clash is kept on the pod otherwise)
            dst = _conflict_name(dst, slots.taken, target_fs)
            slot = None
    if slot is not None:
        if slot.digest == r.digest:
            rem = removal_for(slot.inode)
            return Action(ActionKind.ALREADY_THERE, dst=dst, stored=dst, removal=rem,
                          link_back=link_back and rem is not Removal.NONE,
                          reason="identical content already at this name" + (f"; {stays}" if lower else ""),
                          **common)
        if policy.on_conflict is OnConflict.SKIP:
            return Action(ActionKind.CONFLICT, dst=dst, reason="the target holds different content under "
                          "this name; left in place (--on-conflict rename keeps both)", **common)
        dst = _conflict_name(dst, slots.taken, target_fs)
    folder = posixpath.relpath(dst, target).split("/", 1)[0]
    target_folders.setdefault(r.category or folder, set()).add(folder)
    reason = "" if dst == target_path(target, r) else f"renamed to {posixpath.basename(dst)} (name conflict)"

    if r.digest in stored:
        keep = stored[r.digest]
        keep_inode = slots.find(keep).inode  # type: ignore[union-attr]
        # A store without hardlinks gets a symlink; without symlinks either, a copy (the plan counts its bytes).
        method = Method.HARDLINK if target_hardlinks else Method.SYMLINK if (
            target_fs.symlink and target_fs.up_links) else Method.COPY
        rem = removal_for(keep_inode)
        slots.put(dst, _Slot(r.digest, keep_inode if method is Method.HARDLINK else None))
        why = reason or f"same content as {posixpath.relpath(keep, target)}"
        if method is Method.COPY:
            why += " (the store takes neither hardlinks nor symlinks: a second copy)"
        # A hardlink the store refuses after all (a bind mount, its link limit): a symlink, where it takes them.
        later = (Method.SYMLINK,) if method is Method.HARDLINK and target_fs.symlink else ()
        return Action(ActionKind.SAME_CONTENT, dst=dst, stored=keep, method=method, removal=rem,
                      link_back=link_back and rem is not Removal.NONE,
                      reason=why + (f"; {stays}" if lower else ""), fallbacks=later, **common)

    later: Tuple[Method, ...] = ()
    if policy.mode is Mode.MOVE:
        kind = ActionKind.MOVE
        if probe.hardlink and stable and not lower:
            method, rem = Method.HARDLINK, Removal.UNLINK
        elif probe.rename and not lower:
            # Without stable inode numbers a hardlink's source name could never be shown to be the
            # store's file: a rename moves it in one step instead.
            method, rem = Method.RENAME, Removal.RENAMED
        else:     # (a lower-layer file is copied even within its overlay: link and rename copy it up)
            method, rem = Method.COPY, Removal.NONE if lower else Removal.QUARANTINE
        if method is not Method.COPY:
            # The probe allowed a link or a rename; a folder of the store the filesystem refuses it
            # for after all (a bind mount: EXDEV; a link limit: EMLINK) gets a verified copy, and the
            # source then goes to quarantine (the run journals which method placed it).
            later = (Method.COPY,)
    elif policy.mode is Mode.LINK:
        kind, method, rem = ActionKind.LINK, Method.HARDLINK, Removal.NONE
    else:
        kind, method, rem = ActionKind.COPY, Method.COPY, Removal.NONE
    inode = (r.dev, r.ino) if method in (Method.HARDLINK, Method.RENAME) else None
    slots.put(dst, _Slot(r.digest, inode))
    stored[r.digest] = dst  # type: ignore[index]
    if lower:
        reason = f"{reason}; {stays}" if reason else stays
    return Action(kind, dst=dst, method=method, removal=rem, link_back=link_back, reason=reason, fallbacks=later,
                  **common)


def _tree(sources: Sequence[ScanResult], target_scan: Optional[ScanResult], target: str,
          world: Optional[World], target_fs: FsFacts = UNPROBED) -> names.View:
    """The scanned trees (and the files gathered outside them) as the resolver sees them today."""
    tree: Dict[str, names.Node] = dict((world.outside if world else None) or {})
    for scan in list(sources) + ([target_scan] if target_scan is not None else []):
        for r in scan.records:
            if r.status is Status.SYMLINK:
                tree[r.path] = names.Node("link", 0, None, r.link_target)
            elif r.status is not Status.SPECIAL:
                tree[r.path] = names.Node("file", r.size, r.digest, None)
    roots = [s.root for s in sources] + [target]
    return names.View(tree, roots, world.aliases if world else (),
                      folded=() if target_fs.case_sensitive else (target,))


_GONE = (Removal.UNLINK, Removal.QUARANTINE, Removal.RENAMED)


def _folder_moved_to(folder: str, actions: Sequence[Action], moved: Dict[str, Action]) -> Optional[str]:
    """The store folder every model file below `folder` (of the sources) moved into, keeping its path
    below it, or None: nothing moved, one stays (a conflict, a file set aside by the audit), or they
    went to several folders. Entries that never migrate (placeholders, unfinished downloads) do not count."""
    prefix = folder.rstrip("/") + "/"
    dest = None
    for a in actions:
        if not a.source.startswith(prefix):
            continue
        rest = a.source[len(prefix):]
        b = moved.get(a.source)
        if b is None:
            if a.kind is ActionKind.SKIP and not a.digest:
                continue        # not a model (a placeholder, a .part, a symlink): it stays, as before
            return None
        if b.dst is None or not b.dst.endswith("/" + rest):
            return None
        here = b.dst[:-len(rest) - 1]
        if dest not in (None, here):
            return None
        dest = here
    return dest


def _relinks(actions: List[Action], view: names.View) -> List[Action]:
    """A symlink in the sources whose file leaves its place (moved, no symlink back) would dangle:
    re-point it at the file's new place (the same bytes under the same name). A link to a link
    is left to that link; one to a file that stays needs nothing."""
    moved = {a.source: a for a in actions if a.removal in _GONE and not a.link_back and a.dst}
    if not moved:
        return actions
    out = []
    for a in actions:
        node = view.tree.get(a.source) if a.kind is ActionKind.SKIP else None
        if node is not None and node.kind == "link":
            hop = view.canon(posixpath.join(posixpath.dirname(view.real(a.source)), node.to or ""))
            hop_node = view.tree.get(hop)
            # A symlinked folder inside a category folder (a category folder that is a symlink keeps
            # its category: scan.py): every model below it moved to one store folder.
            folder = _folder_moved_to(hop, actions, moved) if hop_node is None and "/" in a.rel else None
            if folder is not None:
                out.append(a._replace(kind=ActionKind.RELINK, dst=folder, reason=f"symlink to the folder {node.to}: "
                                      "its files moved; re-pointed to their folder in the store"))
                continue
            end = view.final(a.source)
            to = moved.get(hop) or (moved.get(end or "") if hop_node is None or hop_node.kind != "link" else None)
            if to is not None:
                a = a._replace(kind=ActionKind.RELINK, dst=to.dst, size=to.size, digest=to.digest,
                               reason=f"symlink to {node.to}: re-pointed to the moved file")
        out.append(a)
    return out


_REASONS = {
    "gone": "no longer found",
    "kept": "conflict: left in place, the store's file of this name is searched first",
    "renamed": "conflict: stored under a .conflict-N name, the store's file keeps the name",
    "store": "the store holds another file of this name, searched first",
    "other": "another folder is searched first",
}


def _name_changes(actions: Sequence[Action], before: names.View, target: str, world: World, yaml_path: str,
                  yaml_before: Optional[str], yaml_after: Optional[str]
                  ) -> Tuple[Tuple[names.NameChange, ...], Tuple]:
    """Resolve every name ComfyUI loads today before and after the plan (ComfyUI's rules, from
    all sections of the YAML and its own models folder) and list those whose bytes differ."""
    edits: Dict[str, Optional[names.Node]] = {}
    for a in actions:
        if a.method is not Method.NONE and a.dst:
            edits[_placed_at(a.dst, before)] = names.Node("file", a.size, a.digest, None)
    for a in actions:
        if a.removal in _GONE:
            edits[a.source] = names.Node("link", 0, None, a.dst) if a.link_back and a.dst else None
        if a.kind is ActionKind.RELINK:
            edits[a.source] = names.Node("link", 0, None, a.dst)
    after = before.replace(edits)
    where = world.yaml_real or yaml_path
    models = world.models_dir or posixpath.join(posixpath.dirname(where), "models")
    order_before = comfy.search_folders(_yamls(world, where, yaml_before), models, output=world.output)
    order_after = comfy.search_folders(_yamls(world, where, yaml_after), models, output=world.output)
    loads_before = names.loads(order_before, before)
    loads_after = names.loads(order_after, after)
    by_source = {a.source: a for a in actions}

    def why(cat: str, name: str, b: str, a: Optional[str]) -> str:
        act = by_source.get(b)
        if act is not None and act.reason.startswith("renamed to "):
            return _REASONS["renamed"]     # (also unlisted: its other spelling holds it on a case-insensitive store)
        if a is None:
            return _REASONS["gone"]
        if act is not None and act.kind is ActionKind.CONFLICT:
            return _REASONS["kept"]
        if a.startswith(target.rstrip("/") + "/"):
            return _REASONS["store"]
        return _REASONS["other"]

    changes = names.compare(loads_before, loads_after, before, after, why)
    # Logged for verify: the names this run answers for, those loaded today from its sources or
    # after it from a place it changes (a name another run placed is that run's to answer for).
    # The names of the files it places count too: one a user's is_default folder shadows stays shadowed.
    sources = tuple(r.rstrip("/") + "/" for r in before.roots[:-1])
    placed = set()
    for act in actions:
        if act.method is not Method.NONE and act.dst:
            folder, _, name = posixpath.relpath(act.dst, target).partition("/")
            placed.add((comfy.category_of(folder)[0], name))
    logged = []
    for key in sorted(loads_before):
        a = loads_after.get(key)
        n = after.tree.get(a) if a is not None else None
        if n is not None and (loads_before[key].startswith(sources) or a in edits or key in placed):
            logged.append((key[0], key[1], n.digest, n.size))
    return tuple(changes), tuple(logged)


def _yamls(world: World, where: str, text: Optional[str]) -> List[Tuple[str, str]]:
    """Every YAML ComfyUI reads, in order, the written one (`where`) with `text` (launch.yaml_texts)."""
    paths = [p for p, _ in world.yamls]
    out = [(p, text if p == where else t) for p, t in world.yamls]
    if where not in paths:
        out.append((where, text))
    return [(p, t) for p, t in out if t is not None]


def _placed_at(dst: str, view: names.View) -> str:
    """Where a file placed at `dst` lands: run writes through a symlinked store folder on the way
    (preflight.py). One the trees list under the store's name (facts.through_links) keeps it."""
    folder = view.final(posixpath.dirname(dst))
    return posixpath.join(folder, posixpath.basename(dst)) if folder is not None else dst


def _base_path(spec: str, target: str, paths: PathFacts) -> str:
    """The base_path to write. relative: from the YAML's real folder to the real target (ComfyUI
    joins it to the real folder it loads the YAML from). env:VAR: `${VAR}` plus the rest of the
    target below $VAR's current value, refused when VAR is unset or not above the target."""
    if spec == "absolute":
        return target
    if spec == "relative":
        return posixpath.relpath(paths.target, paths.yaml_dir)
    name = spec[4:] if spec.startswith("env:") else ""
    if not name:
        raise BadInput(f"--base-path {spec!r} is not absolute, relative or env:VAR", "pick one of those")
    if not (name[0].isalpha() or name[0] == "_") or not name.replace("_", "").isalnum() or not name.isascii():
        raise BadInput(f"--base-path env:{name}: not a variable name ComfyUI can expand",
                       "use letters, digits and _, e.g. env:COMFY_VOLUME")
    value = paths.env_value if paths.env_name == name else None
    if value is None:
        raise BadInput(f"--base-path env:{name}: ${name} is not set, so ComfyUI would read base_path as a "
                       f"folder literally named ${name} and find no model",
                       f"export {name}=<the volume's mount point, e.g. /workspace> here and where ComfyUI runs")
    value = posixpath.normpath(value) if value else value
    for base in (target, paths.target):
        if value and posixpath.isabs(value) and (base == value or base.startswith(value.rstrip("/") + "/")):
            rest = base[len(value.rstrip("/")):].lstrip("/")
            return "${" + name + "}" + ("/" + rest if rest else "")
    raise BadInput(f"--base-path env:{name}: ${name} is {value!r}, which is not the target {target} "
                   "or a folder above it", f"set {name} to the target or the volume's mount point above it")


def _check_resolves(yaml_text: str, spec: str, target: str, paths: PathFacts) -> None:
    """Resolve the new YAML as ComfyUI will (from the YAML's real folder, with $VAR as set now): its
    base_path must be the target. A YAML that sends ComfyUI elsewhere is never written."""
    env = {paths.env_name: paths.env_value} if paths.env_name and paths.env_value is not None else {}
    where = posixpath.join(paths.yaml_dir, "extra_model_paths.yaml")
    got = comfy.managed_base(yaml_text, where, env)
    stray = comfy.unset_variables(got[0], env) if got is not None else []
    if stray:
        raise BadInput(f"--base-path {spec}: the path {got[0]!r} holds ${stray[0]}, which ComfyUI would expand "
                       "as an environment variable", "choose a target whose path has no '$'")
    if got is not None and "/" + got[1].lstrip("/") not in (target, paths.target):   # "//x" is "/x" here
        raise BadInput(f"--base-path {spec}: ComfyUI would resolve base_path {got[0]!r} to {got[1]}, "
                       f"not to the target {target}", "use --base-path absolute, or report this as a bug")


def _portability_warnings(spec: str, paths: PathFacts) -> List[str]:
    if spec == "relative" and paths.yaml_mount != paths.target_mount:
        return [f"--base-path relative: the YAML (on the mount {paths.yaml_mount}) and the target (on "
                f"{paths.target_mount}) are on different mounts, so the relative path only holds while both "
                "stay where they are; if the volume is mounted elsewhere on other machines, use "
                "--base-path env:VAR (VAR set to the volume's mount point on each machine)"]
    return []


def _custom_folders(actions: Sequence[Action], target: str, policy: Policy, listed: bool,
                    view: Optional[names.View] = None) -> Tuple[CustomFolder, ...]:
    """Explain, per folder ComfyUI does not know, where its files go and what keeps its nodes working.
    A symlink into the store (an earlier run's link back) is neither placed nor staying: its file is stored."""
    def stored(a: Action) -> bool:
        end = view.final(a.source) if view is not None and a.kind is ActionKind.SKIP else None
        return end is not None and (end == target or end.startswith(target.rstrip("/") + "/"))

    groups: Dict[Tuple[str, str], List[Action]] = {}
    for a in actions:
        folder = a.rel.split("/", 1)[0]
        if "/" in a.rel and a.category == folder and comfy.category_of(folder)[1]:   # not linked_categories
            groups.setdefault((a.root, folder), []).append(a)
    out = []
    for (root, name), acts in groups.items():
        placed = [a for a in acts if a.kind not in (ActionKind.SKIP, ActionKind.CONFLICT)]
        linked = sum(1 for a in acts if stored(a))
        stay = len(acts) - len(placed) - linked
        back = any(a.link_back for a in placed)
        dst = posixpath.join(target, name)
        old = f"ComfyUI/models/{name}"
        n = f"{len(placed)} file{'' if len(placed) == 1 else 's'}"
        verb = {Mode.MOVE: "moved", Mode.LINK: "hardlinked", Mode.COPY: "copied"}[policy.mode]
        parts = [f"custom-node folder {name}: ComfyUI does not know it; {n} {verb} to {dst}",
                 f"listed in the YAML as `{name}: {name}`" if listed else "not listed in a YAML (none given)"]
        if policy.mode is not Mode.MOVE:
            parts.append(f"the files also stay in {old}, so nodes that open it directly keep working")
        elif back:
            parts.append(f"a symlink at each old place keeps nodes that open {old} directly working "
                         "(their new downloads land there: run again to move them)")
        elif placed:
            parts.append(f"no symlink left (--no-link-back): nodes that open {old} directly lose these files")
        if linked:
            parts.append(f"{linked} in the store already (a symlink to it at the old place)")
        if stay:
            parts.append(f"{stay} stay where they are (skipped or in conflict)")
        out.append(CustomFolder(name=name, source=posixpath.join(root, name), destination=dst,
                                files=len(placed), stay=stay, listed=listed, link_back=back,
                                note="; ".join(parts)))
    return tuple(out)


_TYPOS = {"lora": "loras", "checkpoint": "checkpoints", "embedding": "embeddings", "controlnets": "controlnet",
          "base path": "base_path", "basepath": "base_path", "vaes": "vae", "upscale_model": "upscale_models"}


def _typo_warnings(text: str) -> List[str]:
    out = []
    for section, conf in (comfy.parse_yaml(text) or {}).items():
        if section == comfy.MANAGED_SECTION or not isinstance(conf, dict):
            continue
        for key in conf:
            if str(key) in _TYPOS:
                out.append(f"extra_model_paths.yaml: {section}.{key} looks like a typo for "
                           f"{_TYPOS[str(key)]!r} (ComfyUI would create an unused category)")
    return out
