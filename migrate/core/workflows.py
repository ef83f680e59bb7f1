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

from migrate.core import comfy

# loader node -> the categories its model widgets choose from, from ComfyUI's loader table (comfy.LOADERS)
LOADERS: dict[str, tuple[str, ...]] = {}
# API-format input name -> the category it chooses from, for nodes that table does not know
INPUTS: dict[str, str] = {"clip_name2": "text_encoders", "clip_name3": "text_encoders", "clip_name4": "text_encoders",
                          "upscale_model": "upscale_models", "lora": "loras"}
for _cat, _pairs in comfy.LOADERS.items():
    for _node, _input in _pairs:
        LOADERS[_node] = LOADERS.get(_node, ()) + (_cat,)
        INPUTS.setdefault(_input, _cat)
# Custom node packs seen on real pods. ComfyUI-GGUF (city96) registers `unet_gguf` / `clip_gguf`, which
# read the diffusion_models (unet) and text_encoders (clip) folders for .gguf files; rgthree's Power
# Lora Loader saves each LoRA as a dict {"on", "lora", "strength"} in widgets_values (API: lora_N inputs).
LOADERS.update({
    "UnetLoaderGGUF": ("diffusion_models",), "UnetLoaderGGUFAdvanced": ("diffusion_models",),
    "CLIPLoaderGGUF": ("text_encoders",), "DualCLIPLoaderGGUF": ("text_encoders",),
    "TripleCLIPLoaderGGUF": ("text_encoders",), "QuadrupleCLIPLoaderGGUF": ("text_encoders",),
    "Power Lora Loader (rgthree)": ("loras",), "Lora Loader Stack (rgthree)": ("loras",),
})
GGUF_CATEGORIES = ("diffusion_models", "text_encoders")     # where ComfyUI-GGUF lists .gguf files
MODEL_EXTS = comfy.MODEL_EXTENSIONS | {".gguf"}           # a value with one of these names a model file
_EXTS = MODEL_EXTS | {".yaml"}
NOT_A_WORKFLOW = "neither a UI workflow"   # the start of the error of JSON that is neither format
MAX_NESTING = 32        # subgraphs inside subgraphs (the frontend nests a few); deeper is reported
MAX_NODES = 100_000     # nodes read from one workflow (a real one has hundreds)


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
    "source",                     # str = "user": SOURCES' key of where it was found
], defaults=("", "user"))):
    __slots__ = ()


# Where a model can be named, in the order they are read: a model none of them names is unused.
SOURCES = {"user": "saved workflows", "custom_nodes": "custom-node example workflows",
           "templates": "ComfyUI's templates", "blueprints": "subgraph blueprints"}


class Source(namedtuple("Source", [
    "kind",                       # str: a key of SOURCES
    "label",                      # str: SOURCES[kind]
    "where",                      # str: the folders read (a pattern), or why none was found
    "files",                      # list[str]: the files found there
])):
    """One place workflows were read from (facts.gather_workflows), for the report's 'how made'."""

    __slots__ = ()


def _looks_like_model(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) < 512 and "\n" not in value and "://" not in value \
        and posixpath.splitext(value)[1].lower() in _EXTS


def _norm(name: str) -> str:
    """Windows-saved workflows write `wan\\x.safetensors`; ComfyUI's names use `/`."""
    return name.replace("\\", "/")


def _values(value: object) -> list:
    """The strings a widget value holds: itself, or one level into a dict or list (rgthree's Power Lora
    Loader saves {"on": true, "lora": "x.safetensors", "strength": 1})."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [v for v in value.values() if isinstance(v, str)]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _declared(models: object) -> list:
    """`models` lists ({name, url, directory}) the frontend saves, top level and in node properties."""
    return [m for m in models if isinstance(m, dict) and isinstance(m.get("name"), str)] \
        if isinstance(models, list) else []


def _ui_graphs(doc: dict) -> tuple[list, str]:
    """Every graph of a UI workflow: the root and each subgraph definition (`definitions.subgraphs`,
    and any definitions nested inside those), each once; (graphs, error when nesting is too deep)."""
    graphs, seen, error = [], set(), ""
    todo = [(doc, 0)]
    while todo:
        graph, depth = todo.pop()
        if depth > MAX_NESTING:
            error = f"subgraphs nested deeper than {MAX_NESTING}: the deeper ones were not read"
            continue
        graphs.append(graph)
        defs = graph.get("definitions") if isinstance(graph.get("definitions"), dict) else {}
        subs = defs.get("subgraphs") if isinstance(defs.get("subgraphs"), list) else []
        for sub in reversed(subs):
            if isinstance(sub, dict) and id(sub) not in seen:
                key = sub.get("id")
                if isinstance(key, str) and key in seen:
                    continue
                seen.update((id(sub), key) if isinstance(key, str) else (id(sub),))
                todo.append((sub, depth + 1))
    return graphs, error


def parse_workflow(path: str, text: str) -> Workflow:
    """The models one workflow file names (UI or API format, with its subgraphs). Never raises on a
    bad file: a file that is not JSON, nested too deep to read, or neither format is `unreadable`."""
    try:
        doc = json.loads(text)
    except RecursionError:
        return Workflow(path, "unreadable", (), "JSON nested too deep to read")
    except ValueError as exc:
        return Workflow(path, "unreadable", (), f"not JSON: {str(exc)[:80]}")
    refs: list[ModelRef] = []
    error = ""
    if isinstance(doc, dict) and isinstance(doc.get("nodes"), list):
        fmt = "ui"
        urls: dict[str, str] = {}
        for m in _declared(doc.get("models")):
            urls[_norm(m["name"])] = m.get("url") or ""
            refs.append(ModelRef("(workflow models list)", _norm(m["name"]),
                                 comfy.LEGACY.get(m.get("directory"), m.get("directory")) or None, m.get("url") or ""))
        graphs, error = _ui_graphs(doc)
        count = 0
        for graph in graphs:
            for node in graph.get("nodes") if isinstance(graph.get("nodes"), list) else ():
                count += 1
                if count > MAX_NODES:
                    error = f"more than {MAX_NODES} nodes: the rest were not read"
                    break
                if not isinstance(node, dict):
                    continue
                kind = str(node.get("type") or "")
                props = node.get("properties") if isinstance(node.get("properties"), dict) else {}
                for m in _declared(props.get("models")):
                    urls[_norm(m["name"])] = m.get("url") or ""
                    where = m.get("directory")
                    refs.append(ModelRef(kind, _norm(m["name"]),
                                         comfy.LEGACY.get(where, where) if isinstance(where, str) and where else None,
                                         m.get("url") or ""))
                values = node.get("widgets_values")
                if isinstance(values, dict):           # some custom nodes save a dict of widgets
                    values = list(values.values())
                for v in values if isinstance(values, list) else ():
                    for s in _values(v):
                        if _looks_like_model(s):
                            refs.append(ModelRef(kind, _norm(s), None))
        refs = [r._replace(url=r.url or urls.get(r.name, "")) for r in refs]
    elif isinstance(doc, dict) and doc and all(isinstance(n, dict) and "class_type" in n for n in doc.values()):
        fmt = "api"
        for node in list(doc.values())[:MAX_NODES]:
            kind = str(node.get("class_type") or "")
            inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
            for key, v in inputs.items():
                inner = isinstance(v, dict)
                for k, s in (v.items() if inner else [(key, v)]):
                    if _looks_like_model(s):
                        refs.append(ModelRef(kind, _norm(s), INPUTS.get(k) if kind not in LOADERS else None))
    else:
        return Workflow(path, "unreadable", (), NOT_A_WORKFLOW + " (nodes) nor an API prompt (class_type)")
    return Workflow(path, fmt, tuple(dict.fromkeys(refs)), error)


def assign_categories(wf: Workflow, names: Mapping[str, Iterable[str]]) -> Workflow:
    """Give each reference its category and keep one per (category, name): the loader's categories
    (the first holding the name, else the first), else the folder the workflow declares for it, else
    the category its input name means, else any category whose names include it (a custom node's
    widget, a subgraph's promoted widget), else the category another node of this workflow gives the
    same name. A value of an unknown node with a model extension (.safetensors, .gguf, ...) that the
    pod lacks is kept with category None (reported missing); other values (.yaml of an unknown node,
    a prompt that only looks like a file name) are dropped. names: category -> the pod's names there."""
    have = {cat: set(ns) for cat, ns in names.items()}
    out, loose = [], []
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
        elif posixpath.splitext(r.name)[1].lower() in MODEL_EXTS:
            loose.append(r)
    placed = {r.name: r.category for r in out}
    out += [r._replace(category=placed[r.name]) if r.name in placed else r for r in loose]
    rows: dict = {}
    for r in out:
        key = (r.category, r.name)
        if key not in rows or (r.url and not rows[key].url):
            rows[key] = rows.get(key, r)._replace(url=r.url or rows.get(key, r).url)
    return wf._replace(refs=tuple(rows.values()))


UNUSED_RULE = ("a model is listed as unused only when nothing names it, in any folder, by its name or its file name: "
               "not a saved workflow of any user, not an example workflow a custom-node pack ships, not one of "
               "ComfyUI's own templates, not a subgraph blueprint (loader widgets, subgraphs and their promoted "
               "widgets, custom nodes' values, the models lists the frontend saves); a model only a template, a "
               "pack's example or a blueprint names is listed apart as named by a template, never as unused; "
               "placeholders (put_*_here) are never listed; each file's bytes are counted once (a hardlink or "
               "symlink of another model costs nothing)")


def _placeholder(name: str) -> bool:
    base = posixpath.basename(name).lower()
    return base.startswith("put_") and "_here" in base


def workflow_doc(workflows: Sequence[Workflow], before: Mapping[tuple[str, str], tuple[str, int] | None],
                 changes: Mapping[tuple[str, str], str], sizes: Mapping[tuple[str, str], int],
                 price_per_gb_month: float, identities: Mapping[tuple[str, str], object] | None = None,
                 sources: Sequence[Source] = ()) -> dict:
    """The report: per saved workflow, each model it names and whether it loads before and after the
    migration; the models nothing names, with their monthly cost on a network volume; the models only
    a template names (workflows whose source is not "user": never listed as unused); the sources read.

    before: (category, name) -> (path ComfyUI loads, size), or None/absent where nothing loads.
    changes: (category, name) -> why its bytes change or it stops loading (the plan's name changes).
    sizes: (category, name) -> size of every model the pod has (what could be unused).
    identities: (category, name) -> (device, inode) of its bytes, None for a symlink (costs nothing);
    absent: each name is its own file.
    """
    identities = identities or {}
    used: set = set()
    named: set = set()
    by_template: dict = {}           # a name (and its file name) -> the first template naming it
    rows = []
    for wf in workflows:
        if wf.source != "user":
            for r in wf.refs:
                for n in (r.name, posixpath.basename(r.name)):
                    by_template.setdefault(n, (wf.path, wf.source))
            continue
        models = []
        for r in wf.refs:
            key = (r.category, r.name)
            used.add(key)
            named.update((r.name, posixpath.basename(r.name)))
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

    def template(k):
        return by_template.get(k[1]) or by_template.get(posixpath.basename(k[1]))

    held = {identities.get(k, k) for k in sizes if k in used or k[1] in named or posixpath.basename(k[1]) in named}
    candidates = sorted(((k, n) for k, n in sizes.items()
                         if k not in used and k[1] not in named and posixpath.basename(k[1]) not in named
                         and not _placeholder(k[1])), key=lambda kv: (-kv[1], kv[0]))
    templated = [(k, n, template(k)) for k, n in candidates if template(k)]
    held |= {identities.get(k, k) for k, _, _ in templated}
    unused, counted = [], set(held)
    for k, n in candidates:
        if template(k):
            continue
        ident = identities.get(k, k)
        costs = ident is not None and ident not in counted
        if ident is not None:
            counted.add(ident)
        unused.append((k, n, n if costs else 0))
    total = sum(c for _, _, c in unused)
    errors = {w.path: w.error for w in workflows if w.error}
    read = [{"kind": s.kind, "label": s.label, "where": s.where, "workflows": len(s.files),
             "unreadable": [{"path": p, "error": errors[p]} for p in s.files if p in errors] if s.kind != "user" else []}
            for s in sources]
    return {
        "workflows": rows,
        "missing": [{"category": c, "name": n} for c, n in sorted(
            {(m["category"], m["name"]) for w in rows for m in w["models"] if m["status"] == "missing"},
            key=lambda cn: (cn[0] or "", cn[1]))],
        "unused": [{"category": k[0], "name": k[1], "size": n, "frees": c,
                    "cost_per_month": round(c / 1e9 * price_per_gb_month, 4)} for k, n, c in unused],
        "unused_bytes": total,
        "unused_cost_per_month": round(total / 1e9 * price_per_gb_month, 2),
        "unused_rule": UNUSED_RULE,
        "price_per_gb_month": price_per_gb_month,
        "templated": [{"category": k[0], "name": k[1], "size": n, "by": by[0], "source": by[1]} for k, n, by in templated],
        "sources": read,
    }


# --- manifests: the models a pod's workflows need, by SHA-256, checked on another pod -------------

MANIFEST_VERSION = 1
VERDICTS = {"same": "present with the same bytes", "other": "present with other bytes", "missing": "missing",
            "unknown": "present; the manifest has no SHA-256 for it (missing on the pod it was made on)"}


def manifest_doc(doc: dict, sha256: Mapping[tuple[str, str], str | None]) -> dict:
    """The manifest of a workflows document (workflow_doc): per saved workflow, each model's category,
    name, size and SHA-256 (None where this pod lacks it). sha256: (category, name) -> hex."""
    return {"manifest": MANIFEST_VERSION, "workflows": [
        {"path": w["path"], "models": [{"category": m["category"], "name": m["name"], "size": m["size"],
                                        "sha256": sha256.get((m["category"], m["name"]))} for m in w["models"]]}
        for w in doc["workflows"]]}


def parse_manifest(text: str) -> dict:
    """A manifest written by `manifest_doc` (as JSON); raises ValueError naming what is wrong."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON ({str(exc)[:60]})") from None
    if not isinstance(doc, dict) or doc.get("manifest") != MANIFEST_VERSION or not isinstance(doc.get("workflows"), list):
        raise ValueError(f"not a comfy-migrate workflows manifest (version {MANIFEST_VERSION})")
    for w in doc["workflows"]:
        models = w.get("models") if isinstance(w, dict) else None
        if not isinstance(w, dict) or not isinstance(w.get("path"), str) or not isinstance(models, list) or not all(
                isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("category"), (str, type(None)))
                and (m.get("sha256") is None or (isinstance(m["sha256"], str) and len(m["sha256"]) == 64))
                and (m.get("size") is None or isinstance(m["size"], int)) for m in models):
            raise ValueError("a workflow entry lacks its path or has a model without category, name or a valid size/sha256")
    return doc


def check_manifest(manifest: dict, here: Mapping[tuple[str, str], int],
                   sha256: Mapping[tuple[str, str], str | None]) -> list[dict]:
    """Per workflow of a manifest, each model's verdict on this pod: same / other / missing / unknown.
    here: (category, name) -> size of what this pod loads for it; sha256: its SHA-256 (read only where
    the sizes agree: other sizes are other bytes)."""
    rows = []
    for w in manifest["workflows"]:
        models = []
        for m in w["models"]:
            key = (m["category"], m["name"])
            if key not in here:
                verdict = "missing"
            elif m.get("sha256") is None:
                verdict = "unknown"
            elif here[key] == m.get("size") and sha256.get(key) == m["sha256"]:
                verdict = "same"
            else:
                verdict = "other"
            models.append(dict(m, verdict=verdict, size_here=here.get(key), sha256_here=sha256.get(key)))
        rows.append({"path": w["path"], "models": models})
    return rows
