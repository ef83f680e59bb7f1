"""Check a completed run against the disk and ComfyUI's resolution rules (reads only)."""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

from migrate import comfy, fsops
from migrate.hashing import hash_path
from migrate.journal import group_steps

PLACING = ("link", "rename", "copy", "dedupe", "symlink")


def remount(old: str, new: str) -> Tuple[str, str]:
    """(old prefix, new prefix) when the target of a run is now reached at another path: the volume
    mounted elsewhere (/workspace/models -> /runpod-volume/models gives /workspace -> /runpod-volume)."""
    o, n = old.rstrip("/").split("/"), new.rstrip("/").split("/")
    k = 0
    while k < min(len(o), len(n)) - 1 and o[-1 - k] == n[-1 - k]:
        k += 1
    return "/".join(o[:len(o) - k]) or "/", "/".join(n[:len(n) - k]) or "/"


def verify_run(records: List[dict], comfyui: Optional[str], target: Optional[str] = None) -> Dict:
    """target: where the run's target is now (default: where the run left it). When it moved with its
    volume, every logged path under the old mount path is read under the new one."""
    head = records[0]
    old_target = head["target"]
    target = target or old_target
    moved = None
    if os.path.realpath(target) != os.path.realpath(old_target):
        moved = remount(old_target, target)
    else:
        target = old_target     # the same folder under another spelling: keep the logged one

    def here(p: str) -> str:
        if moved and (p == moved[0] or p.startswith(moved[0].rstrip("/") + "/")):
            return moved[1].rstrip("/") + p[len(moved[0].rstrip("/")):] if moved[0] != "/" else moved[1] + p
        return p

    steps = group_steps(records)
    placed = [b for b in steps.begins if b["op"] in PLACING and b["step"] in steps.done]
    yaml_path = head.get("yaml")
    if yaml_path and moved and os.path.exists(here(yaml_path)):
        yaml_path = here(yaml_path)
    order: Dict[str, List[str]] = {}
    unset: List[str] = []
    if yaml_path:
        data = fsops.read_file(fsops.through_link(yaml_path))
        # ComfyUI reads <realpath of its folder>/extra_model_paths.yaml: resolve from the real folder.
        as_read = os.path.join(os.path.realpath(os.path.dirname(yaml_path)), os.path.basename(yaml_path))
        models = os.path.realpath(os.path.join(comfyui, "models") if comfyui else
                                  os.path.join(os.path.dirname(as_read), "models"))
        text = data.decode("utf-8") if data else ""
        order = comfy.search_folders([(as_read, text)] if data else [], models)
        base = comfy.managed_base(text, as_read) if data else None
        unset = comfy.unset_variables(base[0], dict(os.environ)) if base else []
    missing, changed, shadowed = [], [], []
    for b in placed:
        dst = here(b["dst"])
        try:
            if hash_path(os.path.realpath(dst)) != b["digest"]:
                changed.append(dst)
                continue
        except OSError:
            missing.append(dst)
            continue
        rel = os.path.relpath(dst, target)
        folder, _, name = rel.partition("/")
        cat, _ = comfy.category_of(folder)
        winner = loaded_path(order, cat, name)
        if order and (winner is None or os.path.realpath(winner) != os.path.realpath(dst)):
            shadowed.append(dst)
    # Link-back symlinks serve custom nodes that open ComfyUI/models/<name> directly: each must still
    # reach its file (an absolute one, or ComfyUI outside the moved volume, breaks on a remount).
    broken = []
    for b in steps.begins:
        if b["op"] == "linkback" and b["step"] in steps.done:
            src = here(b["src"])
            if not os.path.exists(src):      # gone, or a symlink leading nowhere
                broken.append(src)
    orphaned = find_orphans(target, order)
    res = {"run": head["run"], "checked": len(placed), "missing": missing, "changed": changed,
           "shadowed": shadowed, "orphaned": orphaned, "unset_variables": unset, "broken_link_backs": broken,
           # Orphans are news, not failures: on a shared store they are mostly other pods' folders.
           "ok": not (missing or changed or shadowed or unset or broken)}
    if moved:
        res["moved"] = {"from": moved[0], "to": moved[1]}
    return res


def loaded_path(order: Dict[str, List[str]], category: str, name: str) -> Optional[str]:
    """The file ComfyUI loads for a name: the first folder in search order holding a file (or a
    symlink to one) at that relative path; dangling links are skipped, as ComfyUI does."""
    return next((os.path.join(f, name) for f in order.get(category, [])
                 if os.path.isfile(os.path.join(f, name))), None)


def find_orphans(target: str, order: Dict[str, List[str]]) -> List[str]:
    """Files in the target no ComfyUI folder lists (when a YAML is known), and leftover temporaries."""
    from migrate.scan import TEMP_MARK, walk
    listed = {os.path.normpath(f) for folders in order.values() for f in folders}
    out = []
    if not os.path.isdir(target):
        return out
    for rel, _ in walk(target):
        folder = rel.split("/", 1)[0]
        base = rel.rsplit("/", 1)[-1]
        if TEMP_MARK in base or (order and "/" in rel and os.path.join(target, folder) not in listed):
            out.append(os.path.join(target, rel))
    return out


def names_listed_by_comfyui(url: str, timeout: float = 30.0) -> set:
    """Every option string ComfyUI's loaders offer, from a running server's /object_info."""
    import json
    import urllib.request

    with urllib.request.urlopen(url.rstrip("/") + "/object_info", timeout=timeout) as resp:
        info = json.loads(resp.read().decode("utf-8"))
    names: set = set()
    for node in info.values() if isinstance(info, dict) else ():
        inputs = node.get("input", {}) if isinstance(node, dict) else {}
        for group in ("required", "optional"):
            for spec in (inputs.get(group) or {}).values():
                if isinstance(spec, list) and spec and isinstance(spec[0], list):
                    names.update(x for x in spec[0] if isinstance(x, str))
    return names


def unlisted(records: List[dict], listed: set) -> List[str]:
    """Migrated names (relative to their category folder) that the server does not offer."""
    head = records[0]
    steps = group_steps(records)
    out = []
    for b in steps.begins:
        if b["op"] in PLACING and b["step"] in steps.done:
            rel = os.path.relpath(b["dst"], head["target"])
            folder, _, name = rel.partition("/")
            cat, custom = comfy.category_of(folder)
            if not custom and comfy.lists_extension(cat, name) and name not in listed:
                out.append(name)
    return out
