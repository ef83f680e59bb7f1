"""Issue 23, "every name keeps its model or the plan refuses" and the newcomer's smaller findings:
each test runs the real CLI and failed on the code before its fix."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from conftest import as_model, run_cli, run_leaving_conflicts, snapshot_tree
from migrate.core.model import STATE_DIR


def judged(comfyui) -> dict:
    """version -> what ComfyUI's own code (tests/comfyui_oracle.py) loads for each name: 0.3.75, and
    0.33.0 where its source is in ../shared/vendor/."""
    from comfyui_oracle import VENDOR, VERSIONS, comfyui_loads
    return {v: {k: d for k, (d, _) in comfyui_loads(comfyui, version=v).items()}
            for v in VERSIONS if v == "0.3.75" or VENDOR.is_file()}


def changed_names(before: dict, after: dict) -> dict:
    """version -> the names whose bytes differ (or that are gone) between two judged() results."""
    return {v: {k for k in before[v] if after[v].get(k) != before[v][k]} for v in before}


# --- the smaller findings ------------------------------------------------------------------------------

def test_a_bogus_base_path_is_a_bad_option(pod, cli_env):
    """--base-path bogus is a bad option value (2), as --mode sideways is; an unset env:VAR is a fact of the pod (3)."""
    proc = run_cli(["plan", *pod.args("--base-path", "bogus")], cli_env, check=2)
    assert "--base-path" in proc.stderr and "absolute, relative or env:VAR" in proc.stderr
    run_cli(["plan", *pod.args("--base-path", "env:9NOPE")], cli_env, check=2)
    env = dict(cli_env)
    env.pop("NOT_SET_HERE", None)
    run_cli(["plan", *pod.args("--base-path", "env:NOT_SET_HERE")], env, check=3)


def test_a_format_from_the_environment_blames_the_variable(pod, cli_env):
    proc = run_cli(["plan", *pod.args()], dict(cli_env, COMFY_MIGRATE_FORMAT="yaml"), check=2)
    assert "COMFY_MIGRATE_FORMAT" in proc.stderr and "'--format'" not in proc.stderr, proc.stderr
    proc = run_cli(["plan", *pod.args("--format", "yaml")], cli_env, check=2)
    assert "'--format'" in proc.stderr                          # typed: the option is named


def test_a_plan_that_does_not_fit_exits_4(pod, cli_env, tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tiny)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a 1 MiB tmpfs")
    try:
        for args in (["plan"], ["plan", "--format", "json"], ["run", "--dry-run"]):
            proc = run_cli([*args, "--comfyui", pod.comfyui, "--target", tiny], cli_env, check=4)
            assert "DOES NOT FIT" in proc.stdout if "json" not in args else json.loads(proc.stdout)["actions"]
            assert "does not fit" in proc.stderr
    finally:
        subprocess.run(["umount", "-l", str(tiny)])


def test_a_corrupt_lock_is_named_and_taken_over(pod, cli_env):
    lock = pod.target / STATE_DIR / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("\x00garbage{")
    proc = run_cli(["run", *pod.args("--yes", "--wait", "0")], cli_env, check=5)       # just written: named
    assert str(lock) in proc.stderr, proc.stderr
    old = time.time() - 60
    os.utime(lock, (old, old))            # a minute old, far inside the 10-minute lease: garbage, not a holder
    proc = run_leaving_conflicts(pod.args("--yes", "--wait", "0"), cli_env)
    assert "took over a stale lock" in proc.stderr and str(lock) in proc.stderr, proc.stderr
    assert not lock.exists()


def test_quiet_shortens_plan_and_run(pod, cli_env):
    full = run_cli(["plan", *pod.args()], cli_env).stdout
    quiet = run_cli(["plan", "-q", *pod.args()], cli_env).stdout
    assert "clip_vision_h.safetensors" in full and "clip_vision_h.safetensors" not in quiet   # no line per file
    assert " -> target: " in full and " -> target: " not in quiet
    assert "deduplication saves" in quiet and "name changes" in quiet                       # what matters stays
    assert len(quiet.splitlines()) < len(full.splitlines()) // 2 and "+comfy_migrate:" not in quiet
    proc = run_leaving_conflicts(pod.args("--yes", "-q"), cli_env)
    assert "undo with: comfy-migrate rollback" in proc.stdout and "restart ComfyUI" in proc.stdout
    assert "audit log:" not in proc.stdout and "Dockerfile" not in proc.stdout and "action " not in proc.stdout


def test_printed_hints_carry_the_target_and_comfyui_given(pod, cli_env):
    proc = run_leaving_conflicts(pod.args("--yes"), cli_env)
    assert f"`comfy-migrate plan --comfyui {pod.comfyui} --target {pod.target}` says why" in proc.stderr, proc.stderr
    first = json.loads(run_cli(["history", "--target", pod.target, "--format", "json"], cli_env).stdout)[-1]["run"]
    (pod.models / "loras" / "new.safetensors").write_bytes(as_model("new.safetensors", b"a new lora" * 500))
    run_leaving_conflicts(pod.args("--yes"), cli_env)
    proc = run_cli(["rollback", first, "--target", pod.target, "--yes"], cli_env, check=3)
    assert "roll back the newest first: comfy-migrate rollback " in proc.stderr
    hint = proc.stderr.split("roll back the newest first: ", 1)[1].rstrip(")\n")
    for command in hint.split(", then "):
        assert f"--target {pod.target}" in command, proc.stderr
        run_cli([*command.split()[1:], "--yes"], cli_env, check=None)       # pasted, they act on this store
    history = json.loads(run_cli(["history", "--target", pod.target, "--format", "json"], cli_env).stdout)
    assert [r["state"] for r in history] == ["rolled back", "rolled back"], history


def test_ctrl_c_says_how_to_continue_and_plan_does_not_count_the_run_as_dedup(pod, cli_env, other_fs):
    import shutil
    store = other_fs / "models"
    shutil.copytree(pod.target, store, symlinks=True)       # another filesystem: the run copies
    args = ["--comfyui", pod.comfyui, "--target", store]
    before = json.loads(run_cli(["plan", *args, "--format", "json"], cli_env).stdout)["totals"]
    proc = run_cli(["run", *args, "--yes"], dict(cli_env, COMFY_MIGRATE_CRASH_AT="int:12"), check=130)
    assert "comfy-migrate: interrupted: run " in proc.stderr and "continues it" in proc.stderr, proc.stderr
    after = json.loads(run_cli(["plan", *args, "--format", "json"], cli_env).stdout)
    assert after["totals"]["by_action"]["already-there"]["files"] > before["by_action"]["already-there"]["files"]
    assert after["totals"]["dedup_saves_bytes"] == before["dedup_saves_bytes"]     # the run's copies are not dedup
    assert after["interrupted_run"]["placed"]
    undo = proc.stderr.split("`comfy-migrate rollback ", 1)[1].split("`", 1)[0]
    assert f"--target {store}" in undo
    run_cli(["rollback", *undo.split(), "--yes"], cli_env)                        # the printed command undoes it
    assert "interrupted_run" in json.loads(run_cli(["plan", *args, "--format", "json"], cli_env).stdout)
    assert json.loads(run_cli(["plan", *args, "--format", "json"], cli_env).stdout)["interrupted_run"] is None


def test_purge_empties_every_run_of_the_pod_and_names_the_trash(pod, cli_env, tmp_path):
    run_leaving_conflicts(pod.args("--yes"), cli_env)
    (pod.models / "vae" / "again.safetensors").write_bytes((pod.target / "vae" / "wan_2.1_vae.safetensors").read_bytes())
    run_leaving_conflicts(pod.args("--yes"), cli_env)
    quarantine = pod.models / STATE_DIR / "quarantine"
    runs = sorted(p.name for p in quarantine.iterdir() if any(x.is_file() for x in p.rglob("*")))
    assert len(runs) == 2, runs                                  # two runs each set files aside
    proc = run_cli(["purge", "--comfyui", pod.comfyui, "--target", pod.target, "--yes"], cli_env)
    assert not [p for p in quarantine.rglob("*") if p.is_file()], proc.stdout      # both emptied
    trash = tmp_path / "state" / "data" / "Trash"                 # $XDG_DATA_HOME/Trash: HOME's filesystem
    assert f"trash: {trash}" in proc.stdout, proc.stdout
    assert any((trash / "files").iterdir())
    for rid in runs:
        assert f"run {rid}:" in proc.stdout


def test_rollback_and_purge_speak_json(pod, cli_env):
    run_leaving_conflicts(pod.args("--yes"), cli_env)
    env = dict(cli_env, COMFY_MIGRATE_FORMAT="json")
    doc = json.loads(run_cli(["rollback", "--comfyui", pod.comfyui, "--target", pod.target, "--dry-run"], env).stdout)
    assert doc["dry_run"] and doc["steps"] and {"op", "what", "kept_for"} <= set(doc["steps"][0])
    run_cli(["rollback", "--comfyui", pod.comfyui, "--target", pod.target], env, check=7)    # JSON never asks
    doc = json.loads(run_cli(["purge", "--comfyui", pod.comfyui, "--target", pod.target, "--yes",
                              "--permanent"], env).stdout)
    assert doc["files"] > 0 and doc["freed_bytes"] > 0 and doc["kept"] == [] and len(doc["runs"]) == 1
    doc = json.loads(run_cli(["rollback", "--comfyui", pod.comfyui, "--target", pod.target, "--yes"], env).stdout)
    assert doc["run"] == json.loads(run_cli(["history", "--target", pod.target], env).stdout)[0]["run"] and doc["undone"] > 0
    assert doc["skipped"] == []
    doc = json.loads(run_cli(["rollback", "--comfyui", pod.comfyui, "--target", pod.target, "--yes",
                              "--format", "json"], cli_env).stdout)
    assert doc["run"] is None and doc["nothing_to_roll_back"]


def test_a_second_plan_does_not_count_link_backs_as_files_that_stay(pod, cli_env):
    run_leaving_conflicts(pod.args("--yes"), cli_env)
    assert (pod.models / "insightface" / "inswapper_128.onnx").is_symlink()          # the run's link back
    doc = json.loads(run_cli(["plan", *pod.args("--format", "json")], cli_env).stdout)
    folders = {c["name"]: c for c in doc["custom_folders"]}
    assert folders["insightface"]["stay"] == 0 and folders["ultralytics"]["stay"] == 0, folders
    assert "stay where they are" not in run_cli(["plan", *pod.args()], cli_env).stdout


def test_a_flow_style_yaml_is_migrated_not_refused(pod, cli_env):
    pod.yaml.write_text('{"other_ui": {"base_path": "/opt/other",\n  "checkpoints": "models/Stable-diffusion"}}\n')
    before_yaml = pod.yaml.read_bytes()
    before = judged(pod.comfyui)
    proc = run_cli(["plan", *pod.args()], cli_env)
    assert "flow style" in proc.stdout and "+other_ui:" in proc.stdout, proc.stdout
    run_leaving_conflicts(pod.args("--yes"), cli_env)
    changed = changed_names(before, judged(pod.comfyui))        # ComfyUI's own code reads what we wrote
    assert all(c == {("loras", "WanAnimate_relight_lora_fp16.safetensors")} for c in changed.values()), changed
    run_cli(["rollback", "--comfyui", pod.comfyui, "--target", pod.target, "--yes"], cli_env)
    assert pod.yaml.read_bytes() == before_yaml


def test_a_section_that_cannot_follow_the_users_text_is_refused_without_a_foreign_line_number(pod, cli_env):
    pod.yaml.write_text("other_ui:\n  base_path: /opt/other\n  checkpoints: models/sd\n...\n")   # document end
    proc = run_cli(["plan", *pod.args()], cli_env, check=None)
    import re
    assert proc.returncode in (0, 3) and all(int(n) <= 4 for n in re.findall(r"line (\d+)", proc.stderr)), proc.stderr


# --- every name keeps its model or the plan refuses ---------------------------------------------------

def test_a_models_folder_that_is_another_installs_is_refused(pod, cli_env, tmp_path):
    (pod.comfyui / "main.py").write_text("# ComfyUI\n")
    other = tmp_path / "other" / "ComfyUI"
    other.mkdir(parents=True)
    (other / "main.py").write_text("# ComfyUI\n")
    (other / "models").symlink_to(pod.models)
    before = snapshot_tree(pod.root)
    for cmd in (["plan"], ["run", "--yes"]):
        proc = run_cli([*cmd, "--comfyui", other, "--target", pod.target], cli_env, check=3)
        assert f"another ComfyUI install ({pod.comfyui})" in proc.stderr, proc.stderr
    assert snapshot_tree(pod.root) == before


def test_a_model_with_a_name_that_is_not_utf8_makes_run_exit_1_and_is_listed(pod, cli_env):
    bad = os.path.join(os.fsencode(pod.models / "loras"), b"caf\xe9.safetensors")
    with open(bad, "wb") as f:
        f.write(as_model("x.safetensors", b"a lora with a latin-1 name" * 100))
    (pod.models / "loose.safetensors").write_bytes(as_model("x.safetensors", b"directly under models" * 100))
    proc = run_cli(["run", *pod.args("--yes", "--format", "json")], cli_env, check=1)
    stayed = {s["why"] for s in json.loads(proc.stdout)["stayed"]}
    assert stayed == {"conflict", "bad-name", "uncategorised"}, proc.stdout
    assert os.path.exists(bad)
    proc = run_cli(["run", *pod.args("--yes")], cli_env, check=1)         # nothing to do, and still said
    assert "1 bad-name" in proc.stderr and "1 uncategorised" in proc.stderr, proc.stderr


def test_a_yaml_comfyui_does_not_read_is_refused(pod, cli_env, tmp_path):
    before = snapshot_tree(pod.root)
    elsewhere = tmp_path / "elsewhere.yaml"
    proc = run_cli(["run", *pod.args("--yaml", elsewhere, "--yes")], cli_env, check=3)
    assert f"reads {pod.yaml}, not this file" in proc.stderr, proc.stderr
    proc = run_cli(["plan", "--source", pod.models, "--target", pod.target, "--yaml", elsewhere], cli_env, check=3)
    assert "holds no main.py" in proc.stderr, proc.stderr
    assert snapshot_tree(pod.root) == before and not elsewhere.exists()
    link = tmp_path / "link.yaml"                     # the same file through a symlink is the file ComfyUI reads
    link.symlink_to(pod.yaml)
    run_cli(["plan", *pod.args("--yaml", link)], cli_env)


def test_rollback_finds_a_run_made_with_yaml_and_never_says_rolled_back_already(pod, cli_env, tmp_path):
    run_leaving_conflicts(pod.args("--yes"), cli_env)
    run_cli(["rollback", "--comfyui", pod.comfyui, "--target", pod.target, "--yes"], cli_env)
    other = tmp_path / "other" / "ComfyUI"           # another ComfyUI folder whose YAML serves these models
    other.mkdir(parents=True)
    (other / "main.py").write_text("")
    other_yaml = other / "extra_model_paths.yaml"
    run_leaving_conflicts(["--source", pod.models, "--target", pod.target, "--yaml", other_yaml, "--yes"], cli_env)
    proc = run_cli(["rollback", "--comfyui", pod.comfyui, "--target", pod.target, "--yes"], cli_env, check=6)
    assert "rolled back already" in proc.stderr and f"--yaml {other_yaml}" in proc.stderr, proc.stderr
    doc = json.loads(run_cli(["rollback", "--yaml", other_yaml, "--comfyui", pod.comfyui, "--target", pod.target,
                              "--yes", "--format", "json"], cli_env).stdout)
    assert doc["undone"] > 0 and not other_yaml.exists()


@pytest.mark.parametrize("style", ["block", "flow"])
def test_rollback_takes_out_its_section_after_a_tool_redumped_the_yaml(pod, cli_env, style):
    import yaml
    before = judged(pod.comfyui)
    run_leaving_conflicts(pod.args("--yes"), cli_env)
    data = yaml.safe_load(pod.yaml.read_text())
    data["added_later"] = {"base_path": "/opt/later", "loras": "loras"}       # and the user added a section
    pod.yaml.write_text(yaml.safe_dump(data, default_flow_style=(style == "flow")))    # no marker comments left
    assert "comfy-migrate" not in pod.yaml.read_text()
    run_cli(["rollback", "--comfyui", pod.comfyui, "--target", pod.target, "--yes"], cli_env)
    left = yaml.safe_load(pod.yaml.read_text())
    assert "comfy_migrate" not in left and set(left) == {"other_ui", "added_later"}, pod.yaml.read_text()
    assert judged(pod.comfyui) == before                         # every name loads its old bytes again


def test_rollback_that_cannot_take_out_its_section_says_so_naming_the_yaml(pod, cli_env):
    import yaml
    run_leaving_conflicts(pod.args("--yes"), cli_env)
    data = yaml.safe_load(pod.yaml.read_text())
    # Re-dumped by a tool (no markers), and another section now refers to ours through an anchor:
    # taking ours out would break the file, so it stays, and rollback says so naming the YAML.
    ours = yaml.safe_dump({"comfy_migrate": data["comfy_migrate"]}).replace("comfy_migrate:", "comfy_migrate: &ours", 1)
    pod.yaml.write_text(yaml.safe_dump({"other_ui": data["other_ui"]}) + ours + "copy_of_it: *ours\n")
    proc = run_cli(["rollback", "--comfyui", pod.comfyui, "--target", pod.target, "--yes"], cli_env, check=1)
    assert str(pod.yaml) in proc.stderr and "comfy_migrate" in proc.stderr, proc.stderr


def test_rollback_dry_run_does_not_promise_a_file_whose_stored_copy_is_gone(pod, cli_env):
    run_leaving_conflicts(pod.args("--yes"), cli_env)
    run_cli(["purge", "--comfyui", pod.comfyui, "--target", pod.target, "--yes", "--permanent"], cli_env)
    (pod.target / "vae" / "wan_2.1_vae.safetensors").unlink()        # the one copy left of the pod's vae
    src = pod.models / "vae" / "wan_2.1_vae.safetensors"
    proc = run_cli(["rollback", "--comfyui", pod.comfyui, "--target", pod.target, "--dry-run"], cli_env, check=1)
    line = next(x for x in proc.stdout.splitlines() if str(src) in x)
    assert "cannot recreate" in line, proc.stdout
    doc = json.loads(run_cli(["rollback", "--comfyui", pod.comfyui, "--target", pod.target, "--dry-run",
                              "--format", "json"], cli_env, check=1).stdout)
    assert [s for s in doc["steps"] if s["cannot"]] and all(str(src) in s["what"] for s in doc["steps"] if s["cannot"])
    proc = run_cli(["rollback", "--comfyui", pod.comfyui, "--target", pod.target, "--yes"], cli_env, check=1)
    assert str(src) in proc.stderr and not src.exists()              # the real rollback agrees


def test_a_folder_symlink_inside_models_is_repointed_and_its_names_keep_loading(pod, cli_env):
    wan = pod.models / "diffusion_models" / "wan_loras"
    wan.mkdir()
    (wan / "high.safetensors").write_bytes(as_model("x.safetensors", b"wan lora high" * 300))
    (wan / "sub").mkdir()
    (wan / "sub" / "low.safetensors").write_bytes(as_model("x.safetensors", b"wan lora low" * 300))
    (pod.models / "loras" / "wan_linked").symlink_to("../diffusion_models/wan_loras")
    before = judged(pod.comfyui)
    assert all(("loras", "wan_linked/sub/low.safetensors") in b for b in before.values())
    snap = snapshot_tree(pod.models)
    doc = json.loads(run_cli(["plan", *pod.args("--format", "json")], cli_env).stdout)
    assert [c["name"] for c in doc["name_changes"]] == ["WanAnimate_relight_lora_fp16.safetensors"], doc["name_changes"]
    run_leaving_conflicts(pod.args("--yes"), cli_env)
    assert not (wan / "high.safetensors").exists()                  # moved to the store ...
    changed = changed_names(before, judged(pod.comfyui))            # ... and every name loads what it did
    assert all(c == {("loras", "WanAnimate_relight_lora_fp16.safetensors")} for c in changed.values()), changed
    proc = run_cli(["verify", "--comfyui", pod.comfyui, "--target", pod.target], cli_env)
    assert "all good" in proc.stdout
    run_cli(["rollback", "--comfyui", pod.comfyui, "--target", pod.target, "--yes"], cli_env)

    def same(snapshot):        # a re-pointed symlink comes back with its text and mtime, as a new inode
        return {k: v[:3] + v[4:] if v[0] == "symlink" else v for k, v in snapshot.items()}
    assert same(snapshot_tree(pod.models)) == same(snap)


def test_two_installs_whose_yamls_link_to_one_file_are_two_pods(pod, cli_env, tmp_path):
    shared = tmp_path / "shared" / "extra_model_paths.yaml"
    shared.parent.mkdir()
    shared.write_bytes(pod.yaml.read_bytes())
    pod.yaml.unlink()
    pod.yaml.symlink_to(shared)
    b = tmp_path / "b" / "ComfyUI"
    (b / "models" / "loras").mkdir(parents=True)
    (b / "models" / "loras" / "only_b.safetensors").write_bytes(as_model("x.safetensors", b"pod b's lora" * 200))
    (b / "extra_model_paths.yaml").symlink_to(shared)
    run_leaving_conflicts(pod.args("--yes"), cli_env)
    run_cli(["run", "--comfyui", b, "--target", pod.target, "--yes"], cli_env)
    history = json.loads(run_cli(["history", "--target", pod.target, "--format", "json"], cli_env).stdout)
    run_a, run_b = history[0]["run"], history[1]["run"]
    proc = run_cli(["rollback", "--comfyui", pod.comfyui, "--target", pod.target, "--yes"], cli_env, check=3)
    assert f"rollback of run {run_b}" not in proc.stdout and run_b in proc.stderr, proc.stderr   # B's, named, not undone
    states = {r["run"]: r["state"] for r in json.loads(
        run_cli(["history", "--target", pod.target, "--format", "json"], cli_env).stdout)}
    assert states[run_b] != "rolled back" and states[run_a] != "rolled back", states
    run_cli(["verify", "--comfyui", b, "--target", pod.target], cli_env)                       # B still loads its lora
    doc = json.loads(run_cli(["rollback", "--comfyui", b, "--target", pod.target, "--yes", "--format", "json"],
                             cli_env).stdout)
    assert doc["run"] == run_b
    doc = json.loads(run_cli(["rollback", "--comfyui", pod.comfyui, "--target", pod.target, "--yes",
                              "--format", "json"], cli_env).stdout)
    assert doc["run"] == run_a and not doc["skipped"]


def test_one_pods_rollback_keeps_what_another_pods_conflicted_name_loads(pod, cli_env, tmp_path):
    name = "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors"
    b = tmp_path / "b" / "ComfyUI"
    (b / "models" / "loras").mkdir(parents=True)
    (b / "models" / "loras" / name).write_bytes(as_model(name, b"pod b's own bytes" * 300))
    run_leaving_conflicts(pod.args("--yes"), cli_env)                  # A places loras/NAME
    run_leaving_conflicts(["--comfyui", b, "--target", pod.target, "--yes"], cli_env)   # B: a conflict on it
    run_cli(["verify", "--comfyui", b, "--target", pod.target], cli_env)  # B's NAME loads A's file, as its plan said
    proc = run_cli(["rollback", "--comfyui", pod.comfyui, "--target", pod.target, "--yes"], cli_env)
    assert (pod.target / "loras" / name).exists() and (pod.models / "loras" / name).exists(), proc.stdout
    run_cli(["verify", "--comfyui", b, "--target", pod.target], cli_env)  # and still does after A's rollback
    run_cli(["rollback", "--comfyui", b, "--target", pod.target, "--yes"], cli_env)
    assert not (pod.target / "loras" / name).exists()                   # B's rollback lets it go
