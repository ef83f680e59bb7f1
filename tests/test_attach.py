"""The store outlives the pod (issue 21): a redeploy, a worker mounting the volume elsewhere,
later downloads. Through the real CLI, with ComfyUI 0.3.75's own folder_paths.py and
utils/extra_config.py as the oracle of what loads (tests/comfyui_oracle.py) and ComfyUI-Manager's
own get_model_dir as the oracle of where a download goes.

The pod: ComfyUI's image (its folder_paths.py, models/ placeholders, one model baked in, no
YAML) plus models downloaded into it; migrated; then its container rebuilt from a copy of the
image (the volume keeps the store)."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comfyui_oracle import comfyui_loads, download_dirs, oracle_dir
from conftest import as_model, run_cli, snapshot_tree

PLACEHOLDERS = ["checkpoints/put_checkpoints_here", "loras/put_loras_here", "vae/put_vae_here",
                "diffusion_models/put_diffusion_model_files_here", "text_encoders/put_text_encoder_files_here",
                "upscale_models/put_upscale_models_here", "embeddings/put_embeddings_or_textual_inversion_concepts_here"]
BAKED = "checkpoints/baked_into_the_image.safetensors"
DOWNLOADED = {"loras/wan/relight.safetensors": b"L" * 3000, "vae/wan_2.1_vae.safetensors": b"V" * 5000,
              "diffusion_models/wan2.2_i2v_high.safetensors": b"D" * 9000,
              "text_encoders/umt5_xxl.safetensors": b"T" * 7000, "upscale_models/4x.pth": b"U" * 2000,
              "insightface/models/antelopev2/glintr100.onnx": b"I" * 1500}
SAVE_PATHS = ["insightface", "ultralytics/bbox", "sams"]


def make_image(where: Path) -> Path:
    """A ComfyUI as its image carries it: 0.3.75's folder_paths.py, placeholders, one baked model, no YAML."""
    comfyui = where / "ComfyUI"
    (comfyui / "models").mkdir(parents=True)
    for name in ("folder_paths.py", "comfyui_version.py"):
        shutil.copy2(oracle_dir() / name, comfyui / name)
    (comfyui / "main.py").write_text("# ComfyUI's main.py stands here\n")
    for rel in PLACEHOLDERS:
        (comfyui / "models" / rel).parent.mkdir(parents=True, exist_ok=True)
        (comfyui / "models" / rel).write_bytes(b"")
    (comfyui / "models" / BAKED).write_bytes(as_model(BAKED, b"B" * 4000))
    past = time.time() - 86400          # built yesterday: the image's files are older than any run
    for root, dirs, files in os.walk(comfyui):
        for n in files + dirs:
            os.utime(os.path.join(root, n), (past, past))
    return comfyui


def rebuild(comfyui: Path, image: Path) -> None:
    """A redeploy: the container disk rebuilt from the image (the volume, holding the store, stays)."""
    shutil.rmtree(comfyui)
    shutil.copytree(image, comfyui, symlinks=True)


@pytest.fixture
def world(tmp_path):
    """(image, pod's ComfyUI, store): the pod is the image plus downloads, migrated by `run`."""
    image = make_image(tmp_path / "image")
    comfyui = tmp_path / "container" / "ComfyUI"
    shutil.copytree(image, comfyui, symlinks=True)
    for rel, payload in DOWNLOADED.items():
        (comfyui / "models" / rel).parent.mkdir(parents=True, exist_ok=True)
        (comfyui / "models" / rel).write_bytes(as_model(rel, payload))
    store = tmp_path / "volume" / "models"
    store.parent.mkdir()
    return image, comfyui, store


def digests(loads: dict) -> dict:
    return {k: d for k, (d, _) in loads.items()}


def same_bytes(after: dict, before: dict) -> bool:
    """Every name that loaded before loads the same bytes (names of new categories may be added)."""
    return {k: after.get(k, (None,))[0] for k in before} == digests(before)


def verify(comfyui: Path, store: Path, env, check: int = 0) -> subprocess.CompletedProcess:
    return run_cli(["verify", "--comfyui", comfyui, "--target", store], env, check=check)


def assert_downloads_land_in(comfyui: Path, store: Path, prefix=(), real_store=None) -> None:
    """ComfyUI's folder_names_and_paths[category][0][0] for every model category of the installed
    ComfyUI, and ComfyUI-Manager's get_model_dir for every model type and for its own save paths,
    are in the store (its rule, as written in its manager_server.py)."""
    got = download_dirs(comfyui, SAVE_PATHS, prefix)
    inside = str(store).rstrip("/") + "/"
    cats = [c for c in got["first"] if c not in ("custom_nodes", "download_model_base")]
    assert len(cats) >= 20
    for cat in cats:
        assert got["first"][cat].startswith(inside), (cat, got["first"][cat])
        # the folder is made in the store (seen here at real_store: the prefix's bind mount is its own)
        assert os.path.isdir(str(real_store or store) + got["first"][cat][len(str(store)):]), cat
    assert got["first"]["download_model_base"] == str(store)
    for t, d in got["types"].items():
        assert d.startswith(inside), (t, d)
    for p, d in got["save_paths"].items():
        assert d == os.path.join(str(store), p)
    assert got["other"] == os.path.join(str(store), "etc")


def test_redeploy_attach_loads_every_name_from_the_store(world, cli_env):
    image, comfyui, store = world
    before = comfyui_loads(comfyui)
    assert ("checkpoints", "baked_into_the_image.safetensors") in before and len(before) == 6
    run_cli(["run", "--comfyui", comfyui, "--target", store, "--yes"], cli_env)
    assert same_bytes(comfyui_loads(comfyui), before)
    assert_downloads_land_in(comfyui, store)          # run writes the store first for every category too

    rebuild(comfyui, image)
    assert not (comfyui / "extra_model_paths.yaml").exists()
    r = verify(comfyui, store, cli_env, check=8)
    assert "ComfyUI does not search the store first" in r.stdout and "run `comfy-migrate attach`" in r.stdout
    assert "other pods' folders, or leftovers" not in r.stdout

    rebuilt = snapshot_tree(comfyui)
    stored = snapshot_tree(store)
    r = run_cli(["attach", "--comfyui", comfyui, "--target", store, "--dry-run"], cli_env)
    assert "download_model_base: ." in r.stdout
    assert snapshot_tree(comfyui) == rebuilt and snapshot_tree(store) == stored     # a dry run changes nothing
    r = run_cli(["attach", "--comfyui", comfyui, "--target", store, "--yes", "--format", "json"], cli_env)
    doc = json.loads(r.stdout)
    assert doc["yaml_written"] and doc["name_changes"] == [] and doc["not_compared"] == [] and doc["run"]
    # every name the pod had loads the same bytes, each from the store; the image's files stay
    after = comfyui_loads(comfyui)
    assert same_bytes(after, before)
    assert all(p.startswith(str(store) + "/") for _, p in after.values())
    assert ("insightface", "models/antelopev2/glintr100.onnx") in after      # its category, from the store
    assert (comfyui / "models" / BAKED).read_bytes() == (image / "models" / BAKED).read_bytes()
    # nothing of the image changed; added: the YAML, and the custom-node folder's link-back (its
    # nodes open ComfyUI/models/insightface directly), which the rebuild took away
    now = snapshot_tree(comfyui)
    link = comfyui / "models/insightface/models/antelopev2/glintr100.onnx"
    assert os.path.realpath(link) == str(store / "insightface/models/antelopev2/glintr100.onnx")
    assert set(now) - set(rebuilt) == {"extra_model_paths.yaml", "models/insightface", "models/insightface/models",
                                       "models/insightface/models/antelopev2",
                                       "models/insightface/models/antelopev2/glintr100.onnx"}
    assert all(now[k] == v for k, v in rebuilt.items() if k not in ("", "models"))
    assert_downloads_land_in(comfyui, store)
    verify(comfyui, store, cli_env)

    # at every boot: an attached pod changes no byte (mtimes, inodes and the lock included)
    pod_now, store_now = snapshot_tree(comfyui), snapshot_tree(store)
    r = run_cli(["attach", "--comfyui", comfyui, "--target", store, "--yes"], cli_env)
    assert "attached already" in r.stderr
    assert snapshot_tree(comfyui) == pod_now and snapshot_tree(store) == store_now

    # rollback finds this pod's newest run (the attach) by its YAML and leaves no YAML, as before it
    r = run_cli(["rollback", "--comfyui", comfyui, "--target", store, "--yes"], cli_env)
    assert doc["run"] in r.stdout
    assert not (comfyui / "extra_model_paths.yaml").exists()
    assert snapshot_tree(comfyui) == rebuilt


def test_rollback_of_the_original_run_on_a_rebuilt_container(world, cli_env):
    """After a redeploy (the container from its image, the quarantine gone with it) rolling back the
    migration puts every model back into this ComfyUI's models/, as the log records it, found by
    the pod's YAML and sources (no --comfyui default here: the run's sources are all here)."""
    image, comfyui, store = world
    original = snapshot_tree(comfyui)
    run_cli(["run", "--comfyui", comfyui, "--target", store, "--yes"], cli_env)
    rebuild(comfyui, image)
    run_cli(["attach", "--comfyui", comfyui, "--target", store, "--yes"], cli_env)
    # without --comfyui: found as verify finds it (its sources are here), never by the host name
    run_cli(["rollback", "--target", store, "--yes"], cli_env)           # the attach
    assert not (comfyui / "extra_model_paths.yaml").exists()
    run_cli(["rollback", "--target", store, "--yes"], cli_env)           # the migration
    now = snapshot_tree(comfyui)
    for rel in DOWNLOADED:
        key = f"models/{rel}"
        # bytes, mode and mtime as logged (inode and the folders' own times are the rebuild's)
        assert now[key][:3] + now[key][5:] == original[key][:3] + original[key][5:], rel
    assert now[f"models/{BAKED}"][5] == original[f"models/{BAKED}"][5]
    assert not [p for p in store.rglob("*") if p.is_file() and ".comfy-migrate" not in p.parts]


def test_purge_and_rollback_find_the_runs_after_a_new_host_name(world, cli_env):
    """A redeploy gives the pod a new host name: purge and rollback without a ComfyUI folder find its
    run by its sources, as verify does (they found none: the host name differed)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-u", "true"]).returncode != 0:
        pytest.skip("no `unshare -u` here to give a run another host name")
    image, comfyui, store = world
    proc = subprocess.run(["unshare", "-u", sys.executable, "-c",
                           "import os, socket, sys; socket.sethostname('before-redeploy'); "
                           "os.execv(sys.executable, [sys.executable, '-m', 'migrate'] + sys.argv[1:])",
                           "run", "--comfyui", str(comfyui), "--target", str(store), "--yes"],
                          env=cli_env, capture_output=True, text=True, cwd=cli_env["HOME"])
    assert proc.returncode == 0, proc.stderr
    run_cli(["verify", "--target", store], cli_env)
    run_cli(["purge", "--target", store, "--yes"], cli_env)
    r = run_cli(["rollback", "--target", store, "--dry-run"], cli_env)
    assert "rollback of run" in r.stdout


@pytest.mark.parametrize("spec", ["relative", "env:COMFY_VOLUME"])
def test_a_portable_base_path_stays_portable(tmp_path, cli_env, spec):
    """A second run and an attach without --base-path keep the form the first run wrote."""
    volume = tmp_path / "volume"
    comfyui = make_image(volume / "runpod-slim")
    (comfyui / "models/loras/a.safetensors").write_bytes(as_model("a.safetensors", b"A" * 1000))
    store = volume / "models"
    env = dict(cli_env, COMFY_VOLUME=str(volume))
    run_cli(["run", "--comfyui", comfyui, "--target", store, "--yes", "--base-path", spec], env)
    want = "../../models" if spec == "relative" else "${COMFY_VOLUME}/models"
    base = lambda: [ln for ln in (comfyui / "extra_model_paths.yaml").read_text().splitlines()
                    if ln.startswith("  base_path: ")][0]
    assert want in base()
    (comfyui / "models/loras/b.safetensors").write_bytes(as_model("b.safetensors", b"B" * 1000))
    run_cli(["run", "--comfyui", comfyui, "--target", store, "--yes"], env)
    assert want in base()
    (comfyui / "extra_model_paths.yaml").write_text((comfyui / "extra_model_paths.yaml").read_text()
                                                   .replace("  vae: vae\n", ""))
    r = run_cli(["attach", "--comfyui", comfyui, "--target", store, "--yes"], env)
    assert want in base() and "YAML written" in r.stdout
    r = run_cli(["attach", "--comfyui", comfyui, "--target", store, "--yes", "--base-path", "absolute"], env)
    assert base() == f"  base_path: {store}"


def bind_prefix(volume: Path, mount: Path) -> list:
    """A command prefix: run in a mount namespace of its own where `volume` is also at `mount`."""
    return ["unshare", "-m", "sh", "-c",
            f"mount --bind {shlex.quote(str(volume))} {shlex.quote(str(mount))} && exec \"$0\" \"$@\""]


def test_a_worker_mounting_the_volume_elsewhere(world, cli_env):
    """A serverless worker: its own ComfyUI (from the image), the volume bind-mounted at a second
    path. attach with its own --target: every name the pod had loads the same bytes there."""
    if os.geteuid() != 0 or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs root and mount namespaces for a bind mount")
    image, comfyui, store = world
    before = comfyui_loads(comfyui)
    run_cli(["run", "--comfyui", comfyui, "--target", store, "--yes"], cli_env)
    worker = store.parent.parent / "worker" / "ComfyUI"
    shutil.copytree(image, worker, symlinks=True)
    mount = store.parent.parent / "runpod-volume"
    mount.mkdir()
    prefix = bind_prefix(store.parent, mount)
    wstore = mount / "models"

    def cli(*args, check=0):
        proc = subprocess.run([*prefix, sys.executable, "-m", "migrate", *map(str, args)], env=cli_env,
                              capture_output=True, text=True, cwd=cli_env["HOME"])
        assert proc.returncode == check, proc.stdout + proc.stderr
        return proc

    cli("attach", "--comfyui", worker, "--target", wstore, "--yes")
    assert f"base_path: {wstore}\n" in (worker / "extra_model_paths.yaml").read_text()
    after = comfyui_loads(worker, prefix=prefix)
    assert same_bytes(after, before)
    assert all(p.startswith(str(wstore) + "/") for k, (_, p) in after.items() if k in before)
    assert_downloads_land_in(worker, wstore, prefix, real_store=store)
    # a second attach changes no byte; rollback leaves no YAML (and the pod's own is untouched)
    pod_yaml = (comfyui / "extra_model_paths.yaml").read_bytes()
    w, s = snapshot_tree(worker), snapshot_tree(store)
    assert "attached already" in cli("attach", "--comfyui", worker, "--target", wstore, "--yes").stderr
    assert snapshot_tree(worker) == w and snapshot_tree(store) == s
    cli("rollback", "--comfyui", worker, "--target", wstore, "--yes")
    assert not (worker / "extra_model_paths.yaml").exists()
    assert (comfyui / "extra_model_paths.yaml").read_bytes() == pod_yaml
    verify(comfyui, store, cli_env)


def test_attach_declares_a_baked_model_with_other_bytes(world, cli_env):
    """An image whose baked model has other content than the store's file of that name: attach
    says so (name_changes, as plan does), keeps the image's file, and exits 0."""
    image, comfyui, store = world
    run_cli(["run", "--comfyui", comfyui, "--target", store, "--yes"], cli_env)
    rebuild(comfyui, image)
    (comfyui / "models/vae/wan_2.1_vae.safetensors").write_bytes(as_model("v.safetensors", b"X" * 100))
    r = run_cli(["attach", "--comfyui", comfyui, "--target", store, "--dry-run", "--format", "json"], cli_env)
    doc = json.loads(r.stdout)
    assert [(c["category"], c["name"]) for c in doc["name_changes"]] == [("vae", "wan_2.1_vae.safetensors")]
    r = run_cli(["attach", "--comfyui", comfyui, "--target", store, "--yes"], cli_env)
    assert "name changes: 1 name(s) would load other bytes after attach" in r.stdout
    assert (comfyui / "models/vae/wan_2.1_vae.safetensors").read_bytes() == as_model("v.safetensors", b"X" * 100)


def test_attach_refuses_without_a_store(tmp_path, cli_env):
    comfyui = make_image(tmp_path)
    r = run_cli(["attach", "--comfyui", comfyui, "--target", tmp_path / "nowhere", "--yes"], cli_env, check=3)
    assert "no store at" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (comfyui / "extra_model_paths.yaml").exists()


# --- the README's start script and Dockerfile, as printed ----------------------------------------------

def readme_blocks():
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split("## After the migration", 1)[1].split("\n## ", 1)[0]
    import re
    script = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    docker = re.search(r"```dockerfile\n(.*?)```", section, re.S).group(1)
    return script, docker


@pytest.mark.slow       # a pip install of this repository into a fresh venv (PyPI for its dependencies)
def test_the_readme_start_script_and_dockerfile_work_as_printed(world, cli_env, tmp_path):
    """The Dockerfile block, built by a small stand-in for `docker build` (COPY from a build context
    laid out as the README says, RUN through a shell; the image's root is a folder here, so `/opt`
    reads as <root>/opt), then its CMD started twice as a container would be at two boots: the first
    attaches the (rebuilt) pod and starts ComfyUI, the second writes nothing and starts it again."""
    script, docker = readme_blocks()
    image, comfyui, store = world
    run_cli(["run", "--comfyui", comfyui, "--target", store, "--yes"], cli_env)
    rebuild(comfyui, image)
    (comfyui / "main.py").write_text("import json, os, sys\n"
                                     "open('started.json', 'w').write(json.dumps([os.getcwd(), sys.argv[1:]]))\n")
    context = tmp_path / "context"
    repo = Path(__file__).resolve().parent.parent
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    for rel in tracked:
        (context / "comfy-migrate" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, context / "comfy-migrate" / rel)
    (context / "start.sh").write_text(script)
    root = tmp_path / "image-root"
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    env = dict(cli_env, PATH=f"{root / 'venv' / 'bin'}{os.pathsep}{cli_env['PATH']}")
    env.pop("PYTHONPATH", None)
    at = lambda line: line.replace(" /opt/", f" {root}/opt/").replace('"/opt/', f'"{root}/opt/')
    cmd = None
    for line in docker.splitlines():
        word, _, rest = line.partition(" ")
        if word == "COPY":
            src, dst = rest.split()
            dst = Path(at(" " + dst).strip())
            dst.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (context / src).is_dir() else shutil.copy2)(context / src, dst)
        elif word == "RUN":
            proc = subprocess.run(["bash", "-c", at(" " + rest)], env=env, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        elif word == "CMD":
            cmd = json.loads(at(" " + rest).strip())
    assert cmd is not None
    boot = dict(env, COMFYUI_DIR=str(comfyui), COMFY_MIGRATE_TARGET=str(store))
    for first in (True, False):
        before = snapshot_tree(store)
        proc = subprocess.run(cmd, env=boot, capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads((comfyui / "started.json").read_text()) == [str(comfyui), ["--listen", "0.0.0.0", "--port", "8188"]]
        assert (comfyui / "extra_model_paths.yaml").exists()
        assert ("attached already" in proc.stderr) is not first
        if not first:
            assert snapshot_tree(store) == before
    verify(comfyui, store, cli_env)
