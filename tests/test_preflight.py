"""The plan predicts what run meets (issue 15): each trap either makes `plan` (and `run`) refuse with
exit 3 and nothing changed, or `run` then `rollback` give the pod back exactly, rollback exit 0.

Real trees in tmp_path, the real CLI as a subprocess.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import as_model, run_cli, run_leaving_conflicts, snapshot_tree

STATE = ".comfy-migrate"


def state_of(*roots) -> dict:
    """Every entry below the roots (not the roots themselves, as test_rollback's snapshot), our state
    folders left out; the inodes of the YAML (rewritten atomically by run and rollback) and of
    symlinks (run carries them along and rollback makes them again) too."""
    out = {}
    for root in roots:
        for rel, entry in snapshot_tree(root).items():
            if rel == "" or rel == STATE or rel.startswith(STATE + "/"):
                continue
            if rel.endswith("extra_model_paths.yaml") or entry[0] == "symlink":
                entry = entry[:3] + entry[4:]     # rewritten atomically / recreated: a new inode
            out[f"{root}:{rel}"] = entry
    return out


def refused(args, env, *roots, words=()):
    before = state_of(*roots)
    for cmd in ("plan", "run"):
        extra = ["--yes"] if cmd == "run" else []
        p = run_cli([cmd, *args, *extra], env, check=3)
        lines = [ln for ln in p.stderr.splitlines() if ln.startswith("comfy-migrate: error:")]
        assert len(lines) == 1, p.stderr
        for w in words:
            assert w in lines[0], lines[0]
    assert state_of(*roots) == before
    return lines[0]


def round_trip(args, env, *roots, run_exit=0):
    before = state_of(*roots)
    if run_exit == 1:       # the demo pod's conflict stays where it is, and only it
        run_leaving_conflicts([*args, "--yes"], env)
    else:
        run_cli(["run", *args, "--yes"], env, check=run_exit)
    where = args[:4]        # --comfyui C --target T
    run_cli(["rollback", *where, "--dry-run"], env)
    run_cli(["rollback", *where, "--yes"], env)
    assert state_of(*roots) == before


def test_a_file_where_the_store_needs_a_folder_is_refused(pod, cli_env):
    (pod.target / "loras" / "wan").write_bytes(b"not a folder")
    refused(pod.args(), cli_env, pod.comfyui, pod.target, words=("loras/wan", "where run needs a folder"))


def test_a_folder_where_a_file_goes_is_refused(pod, cli_env):
    (pod.target / "loras" / "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors").mkdir(parents=True)
    refused(pod.args(), cli_env, pod.comfyui, pod.target, words=("already exists in the store",))


def test_a_dangling_symlinked_store_folder_is_refused(pod, cli_env, tmp_path):
    os.symlink(tmp_path / "nowhere", pod.target / "diffusion_models")
    refused(pod.args(), cli_env, pod.comfyui, pod.target, words=("does not exist",))


def test_a_symlinked_store_folder_is_written_through_and_rolled_back(pod, cli_env, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    shutil.move(str(pod.target / "loras"), big / "loras")
    os.symlink(big / "loras", pod.target / "loras")
    p = run_cli(["plan", *pod.args()], cli_env)
    assert "is a symlink to" in p.stdout
    # ComfyUI follows the link: no name placed behind it is lost (tests/test_names.py: every name)
    doc = json.loads(run_cli(["plan", *pod.args("--format", "json")], cli_env).stdout)
    assert [c for c in doc["name_changes"] if c["after"] is None] == []
    before = state_of(pod.comfyui, pod.target, big)
    run_cli(["run", *pod.args(), "--yes"], cli_env, check=None)
    assert any(n.startswith("lightx2v") for n in os.listdir(big / "loras"))
    run_cli(["rollback", *pod.args(), "--dry-run"], cli_env)
    run_cli(["rollback", *pod.args(), "--yes"], cli_env)
    assert state_of(pod.comfyui, pod.target, big) == before


def test_a_symlink_planted_after_the_run_is_still_refused_by_rollback(pod, cli_env, tmp_path):
    run_cli(["run", *pod.args(), "--yes"], cli_env, check=None)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(str(pod.target / "diffusion_models"), elsewhere)
    os.symlink(elsewhere, pod.target / "diffusion_models")
    p = run_cli(["rollback", *pod.args(), "--yes"], cli_env, check=1)
    assert "now a symlink" in p.stderr


def test_a_long_name_renamed_on_conflict_fits_the_filesystem(pod, cli_env):
    name = "x" * 228 + ".safetensors"        # 240 bytes
    (pod.models / "loras" / name).write_bytes(as_model(name, b"pod's"))
    (pod.target / "loras" / name).write_bytes(as_model(name, b"the store's"))
    args = pod.args("--on-conflict", "rename")
    p = run_cli(["plan", *args, "--format", "json"], cli_env)
    dsts = [a["destination"] for a in json.loads(p.stdout)["actions"]
            if "conflict-" in (a.get("destination") or "")]
    assert dsts and all(len(os.path.basename(d).encode()) <= 255 for d in dsts)
    round_trip(args, cli_env, pod.comfyui, pod.target)


def test_a_long_name_copied_across_filesystems_gets_a_temp_name_that_fits(pod, cli_env, other_fs):
    name = "y" * 240 + ".safetensors"        # 252 bytes: its temp name must be shortened
    (pod.models / "loras" / name).write_bytes(as_model(name, b"long"))
    target = other_fs / "store"
    target.mkdir()
    args = ["--comfyui", str(pod.comfyui), "--target", str(target)]
    round_trip(args, cli_env, pod.comfyui, target)


@pytest.fixture
def immutable():
    made = []

    def make(path):
        if shutil.which("chattr") is None:
            pytest.skip("no chattr")
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("chattr +i refused here")
        made.append(path)
    yield make
    for p in made:
        subprocess.run(["chattr", "-i", str(p)], capture_output=True)


def test_a_read_only_source_is_refused_before_anything_moves(pod, cli_env, immutable):
    immutable(pod.models / "loras")
    line = refused(pod.args(), cli_env, pod.comfyui, pod.target, words=("loras", "not writable", "--mode copy"))
    assert "models/loras" in line


def test_a_read_only_source_root_cannot_hold_its_quarantine(pod, cli_env, immutable):
    immutable(pod.models)
    refused(pod.args(), cli_env, pod.comfyui, pod.target, words=("not writable",))


def test_a_read_only_source_copies_with_mode_copy(pod, cli_env, immutable):
    immutable(pod.models / "loras")
    round_trip(pod.args("--mode", "copy"), cli_env, pod.comfyui, pod.target, run_exit=1)


def test_a_yaml_symlink_into_a_missing_folder_is_refused(pod, cli_env, tmp_path):
    pod.yaml.unlink()
    os.symlink(tmp_path / "volume" / "not-mounted" / "extra_model_paths.yaml", pod.yaml)
    refused(pod.args(), cli_env, pod.comfyui, pod.target, words=("does not exist", "not-mounted"))


def test_a_missing_target_is_announced_and_only_its_last_folder_made(pod, cli_env, tmp_path):
    target = tmp_path / "new-store"
    args = ["--comfyui", str(pod.comfyui), "--target", str(target)]
    p = run_cli(["plan", *args], cli_env)
    assert "will create it" in p.stdout
    assert not target.exists()
    mistyped = tmp_path / "no" / "such" / "store"
    refused(["--comfyui", str(pod.comfyui), "--target", str(mistyped)], cli_env, pod.comfyui,
            words=("does not exist", "mistyped"))
    assert not (tmp_path / "no").exists()


# --- a plan that meets an obstacle it could not see: run then rollback still give the pod back -------

def _stale_run(pod, place):
    """Plan, then place an obstacle, then execute the plan made before it (what a run meets when the
    world changes under it); returns the run's report."""
    from migrate.app.execute import execute_plan
    from migrate.disk.facts import gather, make_plan
    from migrate.core.model import Policy
    facts = gather([str(pod.models)], str(pod.target), str(pod.yaml), None)
    plan = make_plan(facts, Policy())
    place()
    return execute_plan(plan, ["test"])


@pytest.mark.parametrize("obstacle", ["file", "symlink", "folder"])
def test_an_obstacle_after_the_plan_leaves_what_rollback_undoes(pod, cli_env, tmp_path, monkeypatch, obstacle):
    for k, v in cli_env.items():
        monkeypatch.setenv(k, v)
    from migrate.core import comfy
    from migrate.shell import adopt_comfyui
    adopt_comfyui(str(pod.comfyui))
    big = tmp_path / "big"

    def place():
        if obstacle == "file":
            (pod.target / "loras" / "wan").write_bytes(b"in the way")
        elif obstacle == "symlink":
            big.mkdir()
            shutil.move(str(pod.target / "diffusion_models"), big / "diffusion_models") if (pod.target / "diffusion_models").exists() else (big / "diffusion_models").mkdir()
            os.symlink(big / "diffusion_models", pod.target / "diffusion_models")
        else:
            (pod.target / "loras" / "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors").mkdir()
    roots = (pod.comfyui, pod.target)
    before = None

    def place_and_snap():
        nonlocal before
        place()
        before = state_of(*roots, *((big,) if big.exists() else ()))
    rep = _stale_run(pod, place_and_snap)
    assert obstacle == "symlink" or rep.problems
    run_cli(["rollback", *pod.args(), "--dry-run"], cli_env)
    run_cli(["rollback", *pod.args(), "--yes"], cli_env)
    assert state_of(*roots, *((big,) if big.exists() else ())) == before
    del comfy


# --- what the tool says is true (issue 15) -----------------------------------------------------------

def test_a_source_that_is_not_a_models_folder_is_refused_unless_insisted(tmp_path, cli_env):
    home = tmp_path / "home-like"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_bytes(b"secret")
    args = ["--source", str(home), "--target", str(tmp_path / "store")]
    line = refused(args, cli_env, home, words=("does not look like a ComfyUI models folder", "--source-is-models"))
    assert str(home) in line
    run_cli(["plan", *args, "--source-is-models"], cli_env)


@pytest.mark.parametrize("option", ["--source", "--target", "--comfyui", "--yaml"])
def test_an_empty_option_value_is_an_error(pod, cli_env, option):
    args = {"--source": ["--source", "", "--target", str(pod.target)],
            "--target": ["--comfyui", str(pod.comfyui), "--target", ""],
            "--comfyui": ["--comfyui", "", "--target", str(pod.target)],
            "--yaml": [*pod.args(), "--yaml", ""]}[option]
    before = state_of(pod.comfyui, pod.target)
    p = run_cli(["plan", *args], cli_env, check=2)
    assert "must not be empty" in p.stderr
    assert state_of(pod.comfyui, pod.target) == before


def test_comfyui_given_a_file_says_it_is_a_file(tmp_path, cli_env):
    f = tmp_path / "ComfyUI"
    f.write_text("x")
    p = run_cli(["plan", "--comfyui", str(f)], cli_env, check=3)
    assert "is a file" in p.stderr


@pytest.mark.parametrize("cmd", ["history", "verify", "purge", "rollback"])
def test_read_only_commands_on_a_folder_that_is_not_a_store_say_so(tmp_path, cli_env, cmd):
    p = run_cli([cmd, "--target", str(tmp_path / "not-a-store")], cli_env, check=6)
    assert "is --target right?" in p.stderr


def test_json_outcomes_are_json_on_stdout(pod, cli_env):
    p = run_cli(["run", *pod.args(), "--format", "json"], cli_env, check=7)      # never asks blind
    assert json.loads(p.stdout)["error"]["exit_code"] == 7
    p = run_cli(["plan", "--comfyui", str(pod.root / "nope"), "--format", "json"], cli_env, check=3)
    err = json.loads(p.stdout)["error"]
    assert "does not exist" in err["message"] and err["hint"]
    run_leaving_conflicts([*pod.args(), "--yes", "--format", "json"], cli_env)
    p = run_leaving_conflicts([*pod.args(), "--yes", "--format", "json"], cli_env)
    doc = json.loads(p.stdout)
    assert doc["nothing_to_do"] and any(s["why"] == "conflict" for s in doc["stayed"])


def test_run_exits_1_when_a_held_back_file_stays(pod, cli_env):
    name = pod.models / "loras" / "truncated.safetensors"
    data = as_model("x.safetensors", b"y" * 4000)
    name.write_bytes(data[:-100])             # shorter than its header says: held back by the audit
    p = run_cli(["run", *pod.args(), "--yes"], cli_env, check=1)
    assert "stayed where they are" in p.stderr
    assert name.read_bytes() == data[:-100]
    p = run_cli(["run", *pod.args(), "--yes"], cli_env, check=1)      # nothing to do, still behind
    assert "nothing to do, but" in p.stderr
