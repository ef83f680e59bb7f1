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
from typing import Dict, List, Optional, Sequence, Tuple

from migrate import comfy
from migrate.errors import BadInput
from migrate.model import (
    Action, ActionKind, FileRecord, Method, Mode, OnConflict, Plan, Policy, Probe, Removal, ScanResult,
    Status,
)


def check_roots(sources: Sequence[str], target: str) -> None:
    """Refuse overlapping trees (paths already resolved by the caller)."""
    def inside(a: str, b: str) -> bool:
        return a == b or a.startswith(b.rstrip("/") + "/")

    for s in sources:
        if inside(target, s):
            raise BadInput(f"the target {target} is inside the source {s}",
                           "choose a target outside ComfyUI's models folder")
        if inside(s, target):
            raise BadInput(f"the source {s} is inside the target {target}", "choose another --target")
    for i, a in enumerate(sources):
        for b in sources[i + 1:]:
            if inside(a, b) or inside(b, a):
                raise BadInput(f"sources overlap: {a} and {b}", "give each models tree once")


def target_path(target: str, r: FileRecord) -> str:
    folder = r.category if r.category and not r.custom else r.folder
    return posixpath.join(target, folder, r.name)


def _search_rank(r: FileRecord) -> Tuple:
    folders = comfy.CATEGORIES.get(r.category or "", ((r.folder,), None))[0]
    idx = folders.index(r.folder) if r.folder in folders else len(folders)
    return (r.category or "", idx, r.rel)


def _conflict_name(dst: str, taken) -> str:
    stem, ext = posixpath.splitext(dst)
    n = 1
    while f"{stem}.conflict-{n}{ext}" in taken:
        n += 1
    return f"{stem}.conflict-{n}{ext}"


@dataclass
class _Slot:
    digest: Optional[str]
    inode: Optional[Tuple[int, int]]    # (dev, ino) the name will have, when known


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
) -> Plan:
    if yaml_path is not None and yaml_before is not None:
        comfy.parse_yaml(yaml_before, yaml_path)    # a broken YAML is refused even when nothing moves
    probe_of = {p.source: p for p in probes}
    warnings: List[str] = []
    slots: Dict[str, _Slot] = {}            # target path -> what it holds (now or after the plan)
    stored: Dict[str, str] = {}             # digest -> the one stored copy's path
    target_folders: Dict[str, set] = {}
    for r in (target_scan.records if target_scan else ()):
        path = posixpath.join(target, r.rel)
        slots[path] = _Slot(r.digest if r.status.migrates else None, (r.dev, r.ino))
        if r.status.migrates and r.digest and r.digest not in stored:
            stored[r.digest] = path
        if r.category:
            target_folders.setdefault(r.category, set()).add(r.folder)

    actions: List[Action] = []
    for scan in sources:
        probe = probe_of.get(scan.root, Probe(scan.root, False, False))
        if policy.mode is Mode.LINK and not probe.hardlink:
            raise BadInput(f"--mode link: {scan.root} and {target} cannot share hardlinks ({probe.detail})",
                           "use --mode move or --mode copy")
        for r in sorted(scan.records, key=_search_rank):
            actions.append(_decide(r, target, policy, probe, target_hardlinks, slots, stored, target_folders))

    for a in actions:
        if a.kind is ActionKind.CONFLICT:
            warnings.append(f"conflict: {a.source} differs from {a.dst}; left in place")
    yaml_after = None
    if yaml_path is not None:
        folders = {cat: sorted(fs, key=lambda f: (f != cat, f)) for cat, fs in target_folders.items()}
        if folders:
            base = _base_path(policy.base_path, target, yaml_path)
            yaml_after = comfy.merge_section(yaml_before, comfy.render_section(base, folders), yaml_path)
            warnings.extend(_typo_warnings(yaml_before or ""))
    elif any(a.method is not Method.NONE for a in actions):
        warnings.append("no extra_model_paths.yaml given (--comfyui or --yaml): ComfyUI will not see the target")
    return Plan(
        target=target, sources=tuple(s.root for s in sources), yaml_path=yaml_path, yaml_before=yaml_before,
        yaml_after=yaml_after, policy=policy, actions=tuple(actions), probes=tuple(probes),
        target_hardlinks=target_hardlinks, target_categories=tuple(sorted(target_folders)),
        warnings=tuple(warnings), free_bytes=free_bytes,
    )


def _decide(r: FileRecord, target: str, policy: Policy, probe: Probe, target_hardlinks: bool,
            slots: Dict[str, _Slot], stored: Dict[str, str], target_folders: Dict[str, set]) -> Action:
    common = dict(root=r.root, rel=r.rel, category=r.category, size=r.size, digest=r.digest, dev=r.dev,
                  ino=r.ino, mode=r.mode, mtime_ns=r.mtime_ns)
    if r.status is not Status.MIGRATE:
        return Action(ActionKind.SKIP, reason=r.detail or r.status.value, **common)
    move = policy.mode is Mode.MOVE
    link_back = move and (policy.link_back if policy.link_back is not None else r.custom)

    def removal_for(slot_inode) -> Removal:
        if not move:
            return Removal.NONE
        return Removal.UNLINK if slot_inode == (r.dev, r.ino) else Removal.QUARANTINE

    dst = target_path(target, r)
    slot = slots.get(dst)
    if slot is not None:
        if slot.digest == r.digest:
            rem = removal_for(slot.inode)
            return Action(ActionKind.ALREADY_THERE, dst=dst, stored=dst, removal=rem,
                          link_back=link_back and rem is not Removal.NONE,
                          reason="identical content already at this name", **common)
        if policy.on_conflict is OnConflict.SKIP:
            return Action(ActionKind.CONFLICT, dst=dst, reason="the target holds different content under "
                          "this name; left in place (--on-conflict rename keeps both)", **common)
        dst = _conflict_name(dst, slots)
    folder = posixpath.relpath(dst, target).split("/", 1)[0]
    target_folders.setdefault(r.category or folder, set()).add(folder)
    reason = "" if dst == target_path(target, r) else f"renamed to {posixpath.basename(dst)} (name conflict)"

    if r.digest in stored:
        keep = stored[r.digest]
        keep_inode = slots[keep].inode
        method = Method.HARDLINK if target_hardlinks else Method.SYMLINK
        rem = removal_for(keep_inode)
        slots[dst] = _Slot(r.digest, keep_inode if method is Method.HARDLINK else None)
        return Action(ActionKind.SAME_CONTENT, dst=dst, stored=keep, method=method, removal=rem,
                      link_back=link_back and rem is not Removal.NONE,
                      reason=reason or f"same content as {posixpath.relpath(keep, target)}", **common)

    if policy.mode is Mode.MOVE:
        kind = ActionKind.MOVE
        if probe.hardlink:
            method, rem = Method.HARDLINK, Removal.UNLINK
        elif probe.rename:
            method, rem = Method.RENAME, Removal.RENAMED
        else:
            method, rem = Method.COPY, Removal.QUARANTINE
    elif policy.mode is Mode.LINK:
        kind, method, rem = ActionKind.LINK, Method.HARDLINK, Removal.NONE
    else:
        kind, method, rem = ActionKind.COPY, Method.COPY, Removal.NONE
    inode = (r.dev, r.ino) if method in (Method.HARDLINK, Method.RENAME) else None
    slots[dst] = _Slot(r.digest, inode)
    stored[r.digest] = dst  # type: ignore[index]
    return Action(kind, dst=dst, method=method, removal=rem, link_back=link_back, reason=reason, **common)


def _base_path(spec: str, target: str, yaml_path: str) -> str:
    if spec == "absolute":
        return target
    if spec == "relative":
        return posixpath.relpath(target, posixpath.dirname(yaml_path))
    if spec.startswith("env:") and spec[4:]:
        return "${" + spec[4:] + "}"
    raise BadInput(f"--base-path {spec!r} is not absolute, relative or env:VAR", "pick one of those")


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
