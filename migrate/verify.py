"""Check a completed run against the disk and ComfyUI's resolution rules (reads only)."""
from __future__ import annotations

import os
from typing import Dict, List, Optional

from migrate import comfy, fsops
from migrate.hashing import hash_path
from migrate.journal import group_steps

PLACING = ("link", "rename", "copy", "dedupe", "symlink")


def verify_run(records: List[dict], comfyui: Optional[str]) -> Dict:
    head = records[0]
    target = head["target"]
    steps = group_steps(records)
    placed = [b for b in steps.begins if b["op"] in PLACING and b["step"] in steps.done]
    yaml_path = head.get("yaml")
    order: Dict[str, List[str]] = {}
    if yaml_path:
        data = fsops.read_file(yaml_path)
        models = os.path.join(comfyui, "models") if comfyui else os.path.join(os.path.dirname(yaml_path), "models")
        order = comfy.search_folders([(yaml_path, data.decode("utf-8"))] if data else [], models)
    missing, changed, shadowed = [], [], []
    for b in placed:
        dst = b["dst"]
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
        winner = next((os.path.join(f, name) for f in order.get(cat, [])
                       if os.path.isfile(os.path.join(f, name))), None)
        if order and (winner is None or os.path.realpath(winner) != os.path.realpath(dst)):
            shadowed.append(dst)
    orphaned = find_orphans(target, order)
    return {"run": head["run"], "checked": len(placed), "missing": missing, "changed": changed,
            "shadowed": shadowed, "orphaned": orphaned, "ok": not (missing or changed or shadowed or orphaned)}


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
