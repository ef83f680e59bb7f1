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
    return {"run": head["run"], "checked": len(placed), "missing": missing, "changed": changed,
            "shadowed": shadowed, "ok": not (missing or changed or shadowed)}
