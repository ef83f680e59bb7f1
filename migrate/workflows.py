"""PURE: which models the pod's saved workflows load, and whether each still loads after a migration.

A ComfyUI workflow names its models by the name ComfyUI shows (the path relative to the category
folder, e.g. `wan/high_noise.safetensors`), in a loader node's widget (UI format, what the
browser saves under `ComfyUI/user/<user>/workflows/`: `nodes[]` with `type` and `widgets_values`,
and optionally `properties.models` / a top-level `models` list of `{name, url, directory, hash}`)
or input (API format: `{id: {class_type, inputs}}`). Loaders are mapped to categories with
comfy.LOADERS (the loaders of ComfyUI 0.3.75's `/object_info`); a node that table does not know (a
custom node's) counts a value only where it names a model file the pod has, in any category.

Nothing here reads a file: the shell hands in each workflow's text and the pod's names.
"""
from __future__ import annotations

import json
import posixpath
from collections import namedtuple
from collections.abc import Iterable, Mapping, Sequence

from migrate import comfy

# loader node -> the categories its model widgets choose from, from ComfyUI's loader table (comfy.LOADERS)
LOADERS: dict[str, tuple[str, ...]] = {}
# API-format input name -> the category it chooses from, for nodes that table does not know
INPUTS: dict[str, str] = {"clip_name2": "text_encoders", "clip_name3": "text_encoders", "clip_name4": "text_encoders",
                          "upscale_model": "upscale_models"}
for _cat, _pairs in comfy.LOADERS.items():
    for _node, _input in _pairs:
        LOADERS[_node] = LOADERS.get(_node, ()) + (_cat,)
        INPUTS.setdefault(_input, _cat)
_EXTS = comfy.MODEL_EXTENSIONS | {".yaml", ".gguf"}


class ModelRef(namedtuple("ModelRef", [
    "node",                       # str: the node's type (class_type)
    "name",                       # str: the model name as the workflow writes it
    "category",                   # str | None: None until matched (a custom node's value)
    "url",                        # str = "": where the workflow says it can be downloaded
], defaults=("",))):
    """One model a workflow names."""

    __slots__ = ()


class Workflow(namedtuple("Workflow", [
    "path",                       # str
    "format",                     # str: "ui" | "api" | "unreadable"
    "refs",                       # tuple[ModelRef, ...]
    "error",                      # str = ""
], defaults=("",))):
    __slots__ = ()


def _looks_like_model(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) < 512 and posixpath.splitext(value)[1].lower() in _EXTS


def _norm(name: str) -> str:
    """Windows-saved workflows write `wan\\x.safetensors`; ComfyUI's names use `/`."""
    return name.replace("\\", "/")


def parse_workflow(path: str, text: str) -> Workflow:
    """The models one workflow file names (UI or API format). Never raises on a bad file."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return Workflow(path, "unreadable", (), f"not JSON: {exc}")
    refs: list[ModelRef] = []
    if isinstance(doc, dict) and isinstance(doc.get("nodes"), list):
        fmt = "ui"
        urls: dict[str, str] = {}
        for m in doc.get("models") or ():
            if isinstance(m, dict) and isinstance(m.get("name"), str):
                urls[_norm(m["name"])] = m.get("url") or ""
                refs.append(ModelRef("(workflow models list)", _norm(m["name"]),
                                     comfy.LEGACY.get(m.get("directory"), m.get("directory")) or None, m.get("url") or ""))
        for node in doc["nodes"]:
            if not isinstance(node, dict):
                continue
            kind = str(node.get("type") or "")
            props = node.get("properties") if isinstance(node.get("properties"), dict) else {}
            for m in props.get("models") or ():
                if isinstance(m, dict) and isinstance(m.get("name"), str):
                    urls[_norm(m["name"])] = m.get("url") or ""
            values = node.get("widgets_values")
            if isinstance(values, dict):           # some custom nodes save a dict of widgets
                values = list(values.values())
            for v in values if isinstance(values, list) else ():
                if _looks_like_model(v):
                    refs.append(ModelRef(kind, _norm(v), None))
        refs = [r._replace(url=r.url or urls.get(r.name, "")) for r in refs]
    elif isinstance(doc, dict) and doc and all(isinstance(n, dict) and "class_type" in n for n in doc.values()):
        fmt = "api"
        for node in doc.values():
            kind = str(node.get("class_type") or "")
            inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
            for key, v in inputs.items():
                if _looks_like_model(v):
                    refs.append(ModelRef(kind, _norm(v), INPUTS.get(key) if kind not in LOADERS else None))
    else:
        return Workflow(path, "unreadable", (), "neither a UI workflow (nodes) nor an API prompt (class_type)")
    return Workflow(path, fmt, tuple(dict.fromkeys(refs)))


def assign_categories(wf: Workflow, names: Mapping[str, Iterable[str]]) -> Workflow:
    """Give each reference its category: the loader's categories (the first holding the name, else
    the first), else the category its input name means, else any category whose names include it
    (a custom node's widget); references no category explains are dropped (a value that only
    looks like a file name, e.g. a prompt). names: category -> the names the pod has there."""
    have = {cat: set(ns) for cat, ns in names.items()}
    out = []
    for r in wf.refs:
        cats = LOADERS.get(r.node, ())
        if r.category and not cats:
            cats = (r.category,)
        if cats:
            if r.name.lower().endswith(".yaml") and "configs" in cats:
                cat = "configs"
            else:
                cat = next((c for c in cats if r.name in have.get(c, ())), cats[-1] if cats[0] == "configs" else cats[0])
            out.append(r._replace(category=cat))
            continue
        cat = next((c for c in sorted(have) if r.name in have[c]), None)
        if cat is not None:
            out.append(r._replace(category=cat))
    return wf._replace(refs=tuple(dict.fromkeys(out)))


def workflow_doc(workflows: Sequence[Workflow], before: Mapping[tuple[str, str], tuple[str, int] | None],
                 changes: Mapping[tuple[str, str], str], sizes: Mapping[tuple[str, str], int],
                 price_per_gb_month: float) -> dict:
    """The report: per workflow, each model it names and whether it loads before and after the
    migration; the models no workflow names, with their monthly cost on a network volume.

    before: (category, name) -> (path ComfyUI loads, size), or None/absent where nothing loads.
    changes: (category, name) -> why its bytes change or it stops loading (the plan's name changes).
    sizes: (category, name) -> size of every model the pod has (what could be unused).
    """
    used: set = set()
    rows = []
    for wf in workflows:
        models = []
        for r in wf.refs:
            key = (r.category, r.name)
            used.add(key)
            found = before.get(key)
            if found is None:
                status = "missing"
                note = "no file of this name: the workflow fails on this pod" + (f" (download: {r.url})" if r.url else "")
            elif key in changes:
                status, note = "changes", changes[key]
            else:
                status, note = "ok", "loads the same bytes after the migration"
            models.append({"node": r.node, "category": r.category, "name": r.name, "status": status,
                           "path": found[0] if found else None, "size": found[1] if found else None,
                           "url": r.url, "note": note})
        rows.append({"path": wf.path, "format": wf.format, "error": wf.error, "models": models})
    unused = sorted(((k, n) for k, n in sizes.items() if k not in used), key=lambda kv: (-kv[1], kv[0]))
    gb = sum(n for _, n in unused) / 1e9
    return {
        "workflows": rows,
        "missing": [{"category": c, "name": n} for c, n in sorted(
            {(m["category"], m["name"]) for w in rows for m in w["models"] if m["status"] == "missing"})],
        "unused": [{"category": k[0], "name": k[1], "size": n,
                    "cost_per_month": round(n / 1e9 * price_per_gb_month, 4)} for k, n in unused],
        "unused_bytes": sum(n for _, n in unused),
        "unused_cost_per_month": round(gb * price_per_gb_month, 2),
        "price_per_gb_month": price_per_gb_month,
    }
