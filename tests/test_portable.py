"""Portable YAML (issue 7): --base-path absolute|relative|env:VAR when the volume is mounted at
/workspace on one machine and /runpod-volume on another.

A "volume" folder in tmp_path holds ComfyUI and the store, as /workspace holds runpod-slim/ComfyUI
and models on a pod; moving the volume is a rename of that folder. Which file ComfyUI loads is
decided with comfy.search_folders (our implementation of folder_paths + utils/extra_config), whose
base_path expansion is checked against the stdlib calls ComfyUI makes.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Optional, Tuple
from unittest import mock

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from conftest import as_model, run_cli, snapshot_tree
from migrate.core import comfy
from migrate.core.model import STATE_DIR

Key = Tuple[str, str]

FILES = {
    "diffusion_models/wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors": b"unet " * 300,
    "unet/Wan2_2-Animate-14B_fp8_e4m3fn_scaled_KJ.safetensors": b"animate " * 200,
    "loras/wan/lightx2v_4steps.safetensors": b"lora " * 100,
    "clip/umt5_xxl_fp8_e4m3fn_scaled.safetensors": b"t5 " * 400,
    "vae/wan_2.1_vae.safetensors": b"vae " * 50,
    "insightface/models/antelopev2/glintr100.onnx": b"glint " * 90,
    "insightface/models/antelopev2/scrfd_10g_bnkps.onnx": b"scrfd " * 80,
    "ultralytics/bbox/face_yolov8m.pt": b"yolo " * 70,
}
FILES = {rel: as_model(rel, data) for rel, data in FILES.items()}     # valid models: the audit passes them
STORED = as_model("vae/already_stored.safetensors", b"stored " * 40)
USER_YAML = "# mine\nother_ui:\n  base_path: /opt/other\n  checkpoints: models/Stable-diffusion\n"


def build_volume(vol: Path) -> Path:
    """<vol>/runpod-slim/ComfyUI with models and a user YAML, <vol>/models holding one file already."""
    comfyui = vol / "runpod-slim" / "ComfyUI"
    for rel, data in FILES.items():
        p = comfyui / "models" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (comfyui / "extra_model_paths.yaml").write_text(USER_YAML)
    (vol / "models" / "vae").mkdir(parents=True)
    (vol / "models" / "vae" / "already_stored.safetensors").write_bytes(STORED)
    return comfyui


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def loaded(comfyui: Path, env: Optional[Dict[str, str]] = None) -> Dict[Key, str]:
    """(category, name) -> the file ComfyUI loads, for every name it lists (first folder wins)."""
    yaml_path = comfyui / "extra_model_paths.yaml"
    texts = [(str(yaml_path), yaml_path.read_text())] if yaml_path.exists() else []
    order = comfy.search_folders(texts, str(comfyui / "models"), env=env if env is not None else {})
    out: Dict[Key, str] = {}
    for cat, folders in order.items():
        names = set()
        for folder in folders:
            for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
                dirnames[:] = [d for d in dirnames if d not in (".git", STATE_DIR)]
                names.update(os.path.relpath(os.path.join(dirpath, f), folder) for f in filenames)
        for name in names:
            if not comfy.lists_extension(cat, name):
                continue
            winner = next((os.path.join(f, name) for f in folders if os.path.isfile(os.path.join(f, name))), None)
            if winner is not None:
                out[(cat, name)] = winner
    return out


def contents(found: Dict[Key, str]) -> Dict[Key, str]:
    return {k: digest(p) for k, p in found.items()}


def expected_keys() -> Dict[Key, str]:
    out = {}
    for rel, data in FILES.items():
        folder, name = rel.split("/", 1)
        out[(comfy.category_of(folder)[0], name)] = hashlib.sha256(data).hexdigest()
    out[("vae", "already_stored.safetensors")] = hashlib.sha256(STORED).hexdigest()
    return out


def migrate_volume(vol: Path, cli_env, base_path: str, env_extra: Optional[Dict[str, str]] = None):
    comfyui = vol / "runpod-slim" / "ComfyUI"
    env = dict(cli_env, **(env_extra or {}))
    return run_cli(["run", "--comfyui", comfyui, "--target", vol / "models", "--base-path", base_path, "--yes"], env)


def move_volume(vol: Path, new: Path) -> Path:
    os.rename(vol, new)             # /workspace -> /runpod-volume: every path inside keeps its place
    return new / "runpod-slim" / "ComfyUI"


def assert_all_in(found: Dict[Key, str], store: Path) -> None:
    for key in expected_keys():
        assert os.path.realpath(found[key]).startswith(str(store) + "/"), f"{key} loads {found[key]}"


# --- the must-show: relative survives the move ------------------------------------------------------

def test_relative_base_path_resolves_the_same_models_after_the_volume_moves(tmp_path, cli_env):
    vol = tmp_path / "workspace"
    build_volume(vol)
    migrate_volume(vol, cli_env, "relative")
    comfyui = vol / "runpod-slim" / "ComfyUI"
    text = (comfyui / "extra_model_paths.yaml").read_text()
    assert yaml.safe_load(text)["comfy_migrate"]["base_path"] == "../../models"
    assert str(tmp_path) not in text            # nothing in the file names the mount path
    before = loaded(comfyui)
    assert contents(before) == expected_keys()
    assert_all_in(before, vol / "models")
    assert "all good" in run_cli(["verify", "--comfyui", comfyui, "--target", vol / "models"], cli_env).stdout

    comfyui2 = move_volume(vol, tmp_path / "runpod-volume")
    after = loaded(comfyui2)
    assert contents(after) == contents({k: p.replace(str(vol), str(tmp_path / "runpod-volume"))
                                        for k, p in before.items()})
    assert_all_in(after, tmp_path / "runpod-volume" / "models")
    # The link-back symlinks of custom-node folders are relative too: nodes that open
    # ComfyUI/models/insightface directly still read the same bytes at the new mount path.
    link = comfyui2 / "models/insightface/models/antelopev2/glintr100.onnx"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.read_bytes() == FILES["insightface/models/antelopev2/glintr100.onnx"]
    # verify, given the new mount path, reads the run's log there and finds every model first
    proc = run_cli(["verify", "--comfyui", comfyui2, "--target", tmp_path / "runpod-volume" / "models"], cli_env)
    assert "the target moved with its volume" in proc.stdout and "all good" in proc.stdout


def test_absolute_base_path_does_not_survive_the_move(tmp_path, cli_env):
    vol = tmp_path / "workspace"
    build_volume(vol)
    migrate_volume(vol, cli_env, "absolute")
    comfyui2 = move_volume(vol, tmp_path / "runpod-volume")
    after = loaded(comfyui2)
    lost = [k for k in expected_keys() if k not in after]
    assert ("diffusion_models", "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors") in lost
    assert len(lost) >= len(FILES)           # every migrated name: the YAML points at the old mount path
    proc = run_cli(["verify", "--comfyui", comfyui2, "--target", tmp_path / "runpod-volume" / "models"],
                   cli_env, check=8)
    assert "shadowed:" in proc.stdout


def test_rollback_after_the_volume_moved_is_refused_and_changes_nothing(tmp_path, cli_env):
    vol = tmp_path / "workspace"
    build_volume(vol)
    migrate_volume(vol, cli_env, "relative")
    new = tmp_path / "runpod-volume"
    move_volume(vol, new)
    before = snapshot_tree(new)
    proc = run_cli(["rollback", "--target", new / "models", "--yes"], cli_env, check=3)
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "the volume is mounted elsewhere" in proc.stderr and str(vol / "models") in proc.stderr
    assert snapshot_tree(new) == before


# --- env:VAR ----------------------------------------------------------------------------------------

def test_env_base_path_follows_the_variable_to_either_mount(tmp_path, cli_env):
    vol = tmp_path / "workspace"
    build_volume(vol)
    proc = migrate_volume(vol, cli_env, "env:COMFY_VOLUME", {"COMFY_VOLUME": str(vol)})
    comfyui = vol / "runpod-slim" / "ComfyUI"
    text = (comfyui / "extra_model_paths.yaml").read_text()
    assert "  base_path: '${COMFY_VOLUME}/models'\n" in text
    assert yaml.safe_load(text)["comfy_migrate"]["base_path"] == "${COMFY_VOLUME}/models"
    assert f"ENV COMFY_VOLUME={vol}" in proc.stdout
    assert f"YAML base_path ${{COMFY_VOLUME}}/models (--base-path env:COMFY_VOLUME) resolves here to {vol}/models" \
        in proc.stdout
    before = contents(loaded(comfyui, {"COMFY_VOLUME": str(vol)}))
    assert before == expected_keys()
    # without the variable ComfyUI keeps "${COMFY_VOLUME}" literally: a folder below the YAML's, empty
    assert not any(k in loaded(comfyui, {}) for k in expected_keys() if k[0] != "vae")

    new = tmp_path / "runpod-volume"
    comfyui2 = move_volume(vol, new)
    found = loaded(comfyui2, {"COMFY_VOLUME": str(new)})
    assert contents(found) == before
    assert_all_in(found, new / "models")
    assert ("loras", "wan/lightx2v_4steps.safetensors") not in loaded(comfyui2, {"COMFY_VOLUME": str(vol)})
    # verify resolves the YAML with its own environment, as ComfyUI does
    target2 = new / "models"
    run_cli(["verify", "--comfyui", comfyui2, "--target", target2], dict(cli_env, COMFY_VOLUME=str(new)))
    proc = run_cli(["verify", "--comfyui", comfyui2, "--target", target2], cli_env, check=8)
    assert "$COMFY_VOLUME, which is not set here" in proc.stdout


def test_env_variable_holding_the_store_itself_gives_a_bare_variable(tmp_path, cli_env):
    vol = tmp_path / "workspace"
    comfyui = build_volume(vol)
    doc = json.loads(run_cli(["plan", "--comfyui", comfyui, "--target", vol / "models", "--base-path",
                              "env:MODELS_DIR", "--format", "json"],
                             dict(cli_env, MODELS_DIR=str(vol / "models") + "/")).stdout)
    assert doc["yaml"]["base_path"] == "${MODELS_DIR}" and doc["yaml"]["base_path_mode"] == "env:MODELS_DIR"


@pytest.mark.parametrize("value, message", [
    (None, "$COMFY_VOLUME is not set"),
    ("/somewhere/else", "which is not the target"),
    ("relative/path", "which is not the target"),
])
def test_env_base_path_is_refused_when_the_variable_does_not_lead_to_the_target(tmp_path, cli_env, value, message):
    vol = tmp_path / "workspace"
    comfyui = build_volume(vol)
    env = dict(cli_env)
    if value is not None:
        env["COMFY_VOLUME"] = value
    before = snapshot_tree(vol)
    for cmd in ("plan", "run"):
        proc = run_cli([cmd, "--comfyui", comfyui, "--target", vol / "models", "--base-path", "env:COMFY_VOLUME",
                        *(["--yes"] if cmd == "run" else [])], env, check=3)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and lines[0].startswith("comfy-migrate: error:")
        assert proc.stdout == ""
    assert snapshot_tree(vol) == before        # no log, no YAML, no file moved


@pytest.mark.parametrize("spec", ["env:", "env:1ABC", "env:A-B", "sideways"])
def test_bad_base_path_specs_are_bad_options_exit_2(tmp_path, cli_env, spec):
    # Issue 23: a value no --base-path can have is a bad option (2), as --mode sideways is.
    vol = tmp_path / "workspace"
    comfyui = build_volume(vol)
    proc = run_cli(["plan", "--comfyui", comfyui, "--target", vol / "models", "--base-path", spec], cli_env, check=2)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--base-path" in errors[0] and "Traceback" not in proc.stderr


def test_a_dollar_in_the_target_path_is_refused(tmp_path, cli_env):
    # ComfyUI expands $VARS in base_path: a folder named like one would send it elsewhere.
    vol = tmp_path / "workspace"
    comfyui = build_volume(vol)
    proc = run_cli(["plan", "--comfyui", comfyui, "--target", tmp_path / "$HOME" / "models"], cli_env, check=3)
    assert "$HOME, which ComfyUI would expand" in proc.stderr


# --- where the YAML lives ---------------------------------------------------------------------------

def test_relative_with_the_yaml_outside_the_volume_warns_and_names_env(tmp_path, other_fs, cli_env):
    # ComfyUI in the container image (its own mount), the store on the volume: a relative path
    # between them breaks as soon as the volume is mounted elsewhere.
    vol = tmp_path / "workspace"
    comfyui = build_volume(vol)
    (other_fs / "main.py").write_text("")          # ComfyUI's folder there: it reads this YAML (issue 23)
    out = run_cli(["plan", "--source", comfyui / "models", "--target", vol / "models", "--yaml",
                   other_fs / "extra_model_paths.yaml", "--base-path", "relative"], cli_env).stdout
    assert "different mounts" in out and "--base-path env:VAR" in out
    same = run_cli(["plan", "--comfyui", comfyui, "--target", vol / "models", "--base-path", "relative"],
                   cli_env).stdout
    assert "different mounts" not in same


def test_relative_is_computed_from_the_real_folder_comfyui_loads_the_yaml_from(tmp_path, cli_env):
    # ComfyUI reads <realpath of its folder>/extra_model_paths.yaml: a --comfyui given through a
    # symlink must not change the relative path.
    vol = tmp_path / "workspace"
    build_volume(vol)
    alias = tmp_path / "alias"
    alias.mkdir()
    (alias / "ComfyUI").symlink_to(vol / "runpod-slim" / "ComfyUI")
    run_cli(["run", "--comfyui", alias / "ComfyUI", "--target", vol / "models", "--base-path", "relative",
             "--yes"], cli_env)
    comfyui = vol / "runpod-slim" / "ComfyUI"
    assert yaml.safe_load((comfyui / "extra_model_paths.yaml").read_text())["comfy_migrate"]["base_path"] \
        == "../../models"
    assert contents(loaded(comfyui)) == expected_keys()


# --- after a run: the Dockerfile lines and the check -------------------------------------------------

def test_run_prints_the_dockerfile_lines_and_the_object_info_check(tmp_path, cli_env):
    vol = tmp_path / "workspace"
    comfyui = build_volume(vol)
    out = migrate_volume(vol, cli_env, "absolute").stdout
    assert f"  COPY extra_model_paths.yaml {comfyui}/extra_model_paths.yaml\n" in out
    assert f"  RUN mkdir -p {vol}/models\n" in out
    assert ("  curl -s http://127.0.0.1:8188/object_info | jq '.UNETLoader.input.required.unet_name | "
            "if .[0] == \"COMBO\" then .[1].options else .[0] end'\n") in out
    assert f"comfy-migrate verify --target {vol}/models --comfyui-url http://127.0.0.1:8188" in out


def test_run_json_carries_the_deploy_fields(tmp_path, cli_env):
    vol = tmp_path / "workspace"
    comfyui = build_volume(vol)
    proc = run_cli(["run", "--comfyui", comfyui, "--target", vol / "models", "--base-path", "relative", "--yes",
                    "--format", "json"], cli_env)
    deploy = json.loads(proc.stdout)["deploy"]
    assert deploy["dockerfile"] == [f"COPY extra_model_paths.yaml {comfyui}/extra_model_paths.yaml",
                                    f"RUN mkdir -p {vol}/models"]
    assert deploy["check"][0].startswith("curl -s http://127.0.0.1:8188/object_info | jq ")
    assert any("relative to the YAML's folder" in n for n in deploy["notes"])


# --- our expansion is ComfyUI's: os.path.expandvars(os.path.expanduser(base_path)) ------------------

ENV = {"HOME": "/home/u", "VOL": "/runpod-volume", "V_2": "/x", "EMPTY": ""}


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="$/{}~_.aVOLHME2x-", max_size=24).filter(lambda s: not (s.startswith("~") and
                                                                            s[1:2] not in ("", "/"))))
def test_base_path_expansion_matches_the_stdlib_calls_comfyui_makes(value):
    with mock.patch.dict(os.environ, ENV, clear=True):
        expected = os.path.expandvars(os.path.expanduser(value))
    assert comfy._expand(value, dict(ENV)) == expected


def test_unset_variable_stays_literal_and_resolves_below_the_yaml_folder():
    assert comfy.resolve_base("${NOPE}/models", "/c/extra_model_paths.yaml", {}) == "/c/${NOPE}/models"
    assert comfy.resolve_base("$VOL/models", "/c/y.yaml", {"VOL": "/v"}) == "/v/models"
    assert comfy.resolve_base("../../models", "/w/r/ComfyUI/y.yaml", {}) == "/w/models"
    assert comfy.unset_variables("${A}/$B/x", {"B": "/b"}) == ["A"]


@pytest.mark.parametrize("old, new, prefixes", [
    ("/workspace/models", "/runpod-volume/models", ("/workspace", "/runpod-volume")),
    ("/workspace/models", "/mnt/a/b/models", ("/workspace", "/mnt/a/b")),
    ("/models", "/vol/models", ("/", "/vol")),
    ("/a/store", "/b/other", ("/a/store", "/b/other")),
])
def test_remount_finds_the_mount_paths_from_the_target_paths(old, new, prefixes):
    from migrate.app.verify import remount
    assert remount(old, new) == prefixes


def test_comfyui_outside_the_volume_env_follows_and_verify_names_broken_link_backs(tmp_path, cli_env):
    # ComfyUI in the image (/opt/ComfyUI), the store on the volume: env:VAR follows the volume to its
    # new mount path; the link-backs at ComfyUI/models/insightface cannot, and verify says so.
    vol = tmp_path / "workspace"
    build_volume(vol)
    image = tmp_path / "image"
    image.mkdir()
    os.rename(vol / "runpod-slim" / "ComfyUI", image / "ComfyUI")
    comfyui = image / "ComfyUI"
    run_cli(["run", "--comfyui", comfyui, "--target", vol / "models", "--base-path", "env:VOL", "--yes"],
            dict(cli_env, VOL=str(vol)))
    new = tmp_path / "runpod-volume"
    os.rename(vol, new)
    assert contents(loaded(comfyui, {"VOL": str(new)})) == expected_keys()
    proc = run_cli(["verify", "--comfyui", comfyui, "--target", new / "models"], dict(cli_env, VOL=str(new)),
                   check=8)
    broken = sorted(line.split(": ", 1)[1] for line in proc.stdout.splitlines() if "broken_link_backs:" in line)
    assert broken == sorted(str(comfyui / "models" / rel) for rel in FILES if rel.split("/")[0] in
                            ("insightface", "ultralytics"))
    assert "shadowed:" not in proc.stdout and "missing:" not in proc.stdout


def test_an_absolute_migration_switches_to_relative_with_one_more_run_and_back_with_rollback(tmp_path, cli_env):
    vol = tmp_path / "workspace"
    build_volume(vol)
    migrate_volume(vol, cli_env, "absolute")
    yaml_path = vol / "runpod-slim" / "ComfyUI" / "extra_model_paths.yaml"
    absolute = yaml_path.read_bytes()
    proc = migrate_volume(vol, cli_env, "relative")          # nothing to move: only the YAML changes
    assert "placed 0 files" in proc.stdout
    assert yaml.safe_load(yaml_path.read_text())["comfy_migrate"]["base_path"] == "../../models"
    assert yaml_path.read_text().startswith(USER_YAML)
    run_cli(["rollback", "--target", vol / "models", "--yes"], cli_env)
    assert yaml_path.read_bytes() == absolute
