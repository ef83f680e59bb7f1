"""Edge cases found in review: each test failed on main before its fix.

Real trees in tmp_path; the CLI as a subprocess where the user would run it, execute_plan in
process where the disk must change between plan and run (as another pod or the user would).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conftest import as_model, run_cli
from migrate.disk.facts import gather, make_plan
from migrate.core.model import STATE_DIR, ActionKind, Policy


def _write(path: Path, data: bytes) -> Path:
    """data wrapped in a valid file of the name's model format (the audit holds broken ones back)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(as_model(path.name, data))
    return path


def _pod(tmp_path: Path):
    comfyui = tmp_path / "ws" / "ComfyUI"
    target = tmp_path / "ws" / "models"
    (comfyui / "models").mkdir(parents=True)
    target.mkdir(parents=True)
    (comfyui / "extra_model_paths.yaml").write_text("mine:\n  base_path: /opt\n  loras: x\n")
    return comfyui, target


def _plan(comfyui: Path, target: Path, **policy):
    facts = gather([str(comfyui / "models")], str(target), str(comfyui / "extra_model_paths.yaml"), None)
    return make_plan(facts, Policy(**policy))


def _quarantined(models: Path):
    return sorted(p.name for p in (models / STATE_DIR).rglob("*") if p.is_file())


# --- a source is only set aside when its content is really in the target -------------------------------

def test_already_there_source_kept_when_the_stored_copy_vanished_before_removal(tmp_path):
    """The store already held the file (another inode): the plan sets the source aside. If the stored
    copy is gone by the time sources are removed (another pod, the user), the source must stay:
    quarantining it leaves ComfyUI without the model."""
    from migrate.app.execute import execute_plan
    comfyui, target = _pod(tmp_path)
    data = b"vae " * 500
    src = _write(comfyui / "models" / "vae" / "v.safetensors", data)
    stored = _write(target / "vae" / "v.safetensors", data)
    _write(comfyui / "models" / "loras" / "l.safetensors", b"lora " * 300)
    plan = _plan(comfyui, target)
    assert {a.rel: a.kind for a in plan.actions}["vae/v.safetensors"] is ActionKind.ALREADY_THERE
    stored.unlink()

    rep = execute_plan(plan, ["test"])

    assert src.is_file() and src.read_bytes() == as_model(src.name, data), "source set aside with no copy in the target"
    assert [p.path for p in rep.problems] == [str(src)]
    assert (target / "loras" / "l.safetensors").is_file()      # the rest went on


def test_legacy_duplicate_kept_when_the_file_it_relied_on_failed(tmp_path):
    """unet/x and diffusion_models/x hold the same bytes (two inodes): both map to
    diffusion_models/x in the store, the second as "already there". When placing the first fails
    (changed after the plan), the second must not be set aside: the store never got the content."""
    from migrate.app.execute import execute_plan
    comfyui, target = _pod(tmp_path)
    data = b"wan " * 800
    first = _write(comfyui / "models" / "unet" / "x.safetensors", data)
    second = _write(comfyui / "models" / "diffusion_models" / "x.safetensors", data)
    plan = _plan(comfyui, target)
    kinds = {a.rel: a.kind for a in plan.actions}
    assert kinds["diffusion_models/x.safetensors"] is ActionKind.ALREADY_THERE
    with open(first, "r+b") as f:            # changed between plan and run: its placement fails
        f.write(b"WAN ")

    rep = execute_plan(plan, ["test"])

    assert not (target / "diffusion_models" / "x.safetensors").exists()
    assert second.is_file() and second.read_bytes() == as_model(second.name, data), "source set aside with no copy in the target"
    assert sorted(p.path for p in rep.problems) == sorted([str(first), str(second)])


def test_dedupe_never_links_a_name_to_a_stored_copy_changed_since_the_plan(tmp_path):
    """The store holds the content under another name: the plan makes this name a link to it. If that
    stored file was replaced by other bytes since the plan, the link would give ComfyUI (which searches
    the store first) other bytes under this name: nothing is linked and the source stays."""
    from migrate.app.execute import execute_plan
    comfyui, target = _pod(tmp_path)
    data = b"style " * 400
    src = _write(comfyui / "models" / "loras" / "mine.safetensors", data)
    stored = _write(target / "loras" / "theirs.safetensors", data)
    plan = _plan(comfyui, target)
    assert {a.rel: a.kind for a in plan.actions}["loras/mine.safetensors"] is ActionKind.SAME_CONTENT
    stored.unlink()
    _write(stored, b"other lora " * 100)

    rep = execute_plan(plan, ["test"])

    assert not os.path.lexists(target / "loras" / "mine.safetensors")
    assert src.is_file() and src.read_bytes() == as_model(src.name, data)
    assert [p.path for p in rep.problems] == [str(target / "loras" / "mine.safetensors")]


# --- rollback gives folders back their times -------------------------------------------------------------

OLD_NS = 1_600_000_000_000_000_000


def _aged_pod(tmp_path: Path, target: Path):
    comfyui, _ = _pod(tmp_path)
    models = comfyui / "models"
    _write(models / "loras" / "a.safetensors", b"a " * 900)
    _write(models / "loras" / "sub" / "dup.safetensors", b"a " * 900)
    _write(models / "clip" / "te.safetensors", b"te " * 700)
    _write(models / "insightface" / "models" / "buffalo" / "det.onnx", b"det " * 300)
    _write(models / "loras" / "put_loras_here", b"")
    _write(target / "vae" / "old.safetensors", b"old " * 100)
    for root in (comfyui, target):
        for dirpath, dirnames, filenames in os.walk(root):
            for n in filenames:
                os.utime(os.path.join(dirpath, n), ns=(OLD_NS, OLD_NS + 7))
        for dirpath, dirnames, filenames in os.walk(root, topdown=False):
            os.utime(dirpath, ns=(OLD_NS, OLD_NS))
    return comfyui


def _without_state(snap: dict) -> dict:
    """The target's snapshot without our state folder, which stays: it is one more entry (and link)
    of the root, made when the lock is first taken, so the root's mtime and link count are left out."""
    out = {k: v for k, v in snap.items() if not k.startswith(STATE_DIR)}
    out[""] = out[""][:2] + out[""][3:4] + out[""][5:]
    return out


@pytest.mark.parametrize("fs, killed_at", [("same-fs", None), ("cross-fs", None), ("same-fs", 9),
                                            ("cross-fs", 3), ("cross-fs", 14)])
@pytest.mark.slow
def test_rollback_restores_folder_mtimes(request, tmp_path, cli_env, fs, killed_at):
    """Also when the run was killed after journal record N and continued by a second `run`."""
    from conftest import snapshot_tree
    target = (request.getfixturevalue("other_fs") if fs == "cross-fs" else tmp_path / "ws") / "models"
    comfyui = _aged_pod(tmp_path, target)
    before = snapshot_tree(comfyui), _without_state(snapshot_tree(target))
    args = ["run", "--comfyui", comfyui, "--target", target, "--yes"]
    if killed_at:
        run_cli(args, dict(cli_env, COMFY_MIGRATE_CRASH_AT=str(killed_at)), check=-9)
    run_cli(args, cli_env)
    assert not (comfyui / "models" / "loras" / "a.safetensors").exists()
    run_cli(["rollback", "--target", target, "--yes"], cli_env)
    after = snapshot_tree(comfyui), _without_state(snapshot_tree(target))
    for snap in (before[0], after[0]):      # the YAML gets its old bytes and mtime back in a new inode
        snap["extra_model_paths.yaml"] = snap["extra_model_paths.yaml"][:3] + snap["extra_model_paths.yaml"][4:]
    diff = [(k, before[i].get(k), after[i].get(k)) for i in (0, 1) for k in set(before[i]) | set(after[i])
            if before[i].get(k) != after[i].get(k)]
    assert not diff, diff


# --- user errors: one line, the fix named, the documented exit code --------------------------------------

def test_comfyui_pointing_at_the_models_folder_names_the_fix(tmp_path, cli_env):
    comfyui, target = _pod(tmp_path)
    _write(comfyui / "models" / "loras" / "a.safetensors", b"a " * 100)
    res = run_cli(["plan", "--comfyui", comfyui / "models", "--target", target], cli_env, check=3)
    assert res.stderr.count("\n") == 1, res.stderr
    assert "models folder itself" in res.stderr and f"--comfyui {comfyui}" in res.stderr, res.stderr


def test_read_only_target_is_refused_before_planning(tmp_path, cli_env):
    """A target that cannot be written (read-only mount) is one line and exit 3 at plan time, not a
    plan of moves that `run` then fails with a hint to continue or roll back."""
    import subprocess
    comfyui, target = _pod(tmp_path)
    _write(comfyui / "models" / "loras" / "a.safetensors", b"a " * 100)
    if os.geteuid() != 0 or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs root and mount namespaces for a read-only bind mount")
    import shlex
    import sys
    cmd = (f"mount --bind {shlex.quote(str(target))} {shlex.quote(str(target))} && "
           f"mount -o remount,bind,ro {shlex.quote(str(target))} && "
           f"{shlex.quote(sys.executable)} -m migrate plan --comfyui {shlex.quote(str(comfyui))} "
           f"--target {shlex.quote(str(target))}")
    res = subprocess.run(["unshare", "-m", "sh", "-c", cmd], env=cli_env, capture_output=True, text=True,
                         cwd=cli_env["HOME"])
    assert res.returncode == 3, (res.returncode, res.stdout, res.stderr)
    assert res.stderr.count("\n") == 1 and "not writable" in res.stderr, res.stderr


# --- a YAML that is a symlink (kept on the volume, linked into ComfyUI) -----------------------------------

@pytest.mark.parametrize("base", ["absolute", "relative"])
def test_symlinked_yaml_is_written_through_and_rolled_back(tmp_path, cli_env, base):
    """ComfyUI reads <its folder>/extra_model_paths.yaml through the link (and resolves a relative
    base_path from its own folder): the file behind the link is updated, the link stays. Rollback
    gives back the file's bytes and mtime and the mtime of the folder behind the link (where the
    run's atomic write made and renamed its temporary), as it does the ComfyUI folder's. Before:
    that folder kept the run's time."""
    import yaml as pyyaml
    from migrate.core import comfy
    comfyui, target = _pod(tmp_path)
    real = tmp_path / "ws" / "config" / "extra_model_paths.yaml"
    real.parent.mkdir()
    os.rename(comfyui / "extra_model_paths.yaml", real)
    os.symlink("../config/extra_model_paths.yaml", comfyui / "extra_model_paths.yaml")
    old = real.read_bytes()
    _write(comfyui / "models" / "loras" / "a.safetensors", b"a " * 100)
    for i, p in enumerate((real, real.parent, comfyui)):
        os.utime(p, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i), follow_symlinks=False)
    times = {p: os.lstat(p).st_mtime_ns for p in (real, real.parent, comfyui, comfyui / "extra_model_paths.yaml")}

    run_cli(["run", "--comfyui", comfyui, "--target", target, "--base-path", base, "--yes"], cli_env)
    link = comfyui / "extra_model_paths.yaml"
    assert os.readlink(link) == "../config/extra_model_paths.yaml"
    text = real.read_text()
    assert pyyaml.safe_load(text)["comfy_migrate"]["loras"] == "loras"
    assert os.lstat(real.parent).st_mtime_ns != times[real.parent]
    order = comfy.search_folders([(str(link), text)], str(comfyui / "models"), env={})
    assert order["loras"][0] == str(target / "loras")
    run_cli(["verify", "--comfyui", comfyui, "--target", target], cli_env)

    run_cli(["rollback", "--target", target, "--yes"], cli_env)
    assert os.readlink(link) == "../config/extra_model_paths.yaml" and real.read_bytes() == old
    assert (comfyui / "models" / "loras" / "a.safetensors").is_file()
    assert {p: os.lstat(p).st_mtime_ns for p in times} == times


def test_models_folder_that_is_a_symlink_to_the_target_says_so(tmp_path, cli_env):
    """RunPod templates often make ComfyUI/models a symlink to /workspace/models: migrating into that
    store is refused in one line that says why, not "the target X is inside the source X"."""
    root = tmp_path / "ws"
    _write(root / "models" / "loras" / "a.safetensors", b"a " * 100)
    (root / "ComfyUI").mkdir()
    os.symlink("../models", root / "ComfyUI" / "models")
    res = run_cli(["plan", "--comfyui", root / "ComfyUI", "--target", root / "models"], cli_env, check=3)
    assert res.stderr.count("\n") == 1 and "same folder" in res.stderr and "symlink" in res.stderr, res.stderr


# --- rollback never deletes the only copy because another file now sits at the old place ------------------

def _only_copies(root: Path, data: bytes) -> list:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and p.read_bytes() == data]


@pytest.mark.parametrize("fs", ["same-fs", "cross-fs-purged"])
def test_rollback_keeps_the_stored_file_when_a_new_file_took_its_old_name(request, tmp_path, cli_env, fs):
    """After the run a node (or the user) downloads another version to the model's old place. Rollback
    must not delete the stored copy on the grounds that "the source is back": the source name now holds
    other bytes, and the stored copy is the only one left of the original."""
    target = (request.getfixturevalue("other_fs") if fs.startswith("cross") else tmp_path / "ws") / "models"
    comfyui, _ = _pod(tmp_path)
    data = b"original lora " * 300
    src = _write(comfyui / "models" / "loras" / "a.safetensors", data)
    run_cli(["run", "--comfyui", comfyui, "--target", target, "--yes"], cli_env)
    if fs.endswith("purged"):
        run_cli(["purge", "--target", target, "--permanent", "--yes"], cli_env)
    assert not src.exists()
    _write(src, b"newer version " * 200)

    run_cli(["rollback", "--target", target, "--yes"], cli_env, check=None)

    assert src.read_bytes() == as_model(src.name, b"newer version " * 200)
    data = as_model(src.name, data)
    assert _only_copies(tmp_path, data) + _only_copies(target, data), "the original model is gone"


def test_yaml_in_a_missing_folder_is_refused_before_anything_moves(tmp_path, cli_env):
    """Before: the run placed every file, then failed writing the YAML (exit 1, a run to roll back)."""
    comfyui, target = _pod(tmp_path)
    _write(comfyui / "models" / "loras" / "a.safetensors", b"a " * 100)
    res = run_cli(["run", "--comfyui", comfyui, "--target", target, "--yaml", tmp_path / "typo" / "x.yaml",
                   "--yes"], cli_env, check=3)
    assert res.stderr.count("\n") == 1 and "does not exist" in res.stderr, res.stderr
    assert not (target / STATE_DIR).exists() and not (target / "loras").exists()


def test_continued_run_records_the_times_of_folders_it_touches_first(tmp_path, cli_env):
    """A file appears in a folder the killed session never touched; the second session moves it: that
    folder's time from before the second session comes back too."""
    from conftest import snapshot_tree
    target = tmp_path / "ws" / "models"
    comfyui = _aged_pod(tmp_path, target)
    _write(comfyui / "models" / "vae" / "put_vae_here", b"")
    args = ["run", "--comfyui", comfyui, "--target", target, "--yes"]
    run_cli(args, dict(cli_env, COMFY_MIGRATE_CRASH_AT="5"), check=-9)
    new = _write(comfyui / "models" / "vae" / "new.safetensors", b"new vae " * 50)
    os.utime(new, ns=(OLD_NS, OLD_NS))
    os.utime(new.parent, ns=(OLD_NS, OLD_NS))
    before = snapshot_tree(comfyui / "models" / "vae")
    run_cli(args, cli_env)
    assert not new.exists()
    run_cli(["rollback", "--target", target, "--yes"], cli_env)
    assert snapshot_tree(comfyui / "models" / "vae") == before
