"""Custom-node folders (issue 7): folders ComfyUI does not know are migrated like the rest, listed
in the YAML, keep working at their old place through symlinks, and the plan explains each one.
"""
from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import pytest
import yaml

from conftest import as_model, run_cli
from migrate.core import comfy
from test_rollback import assert_same, snapshot

CUSTOM = {
    "insightface/models/antelopev2/glintr100.onnx": b"glint " * 90,
    "insightface/models/antelopev2/scrfd_10g_bnkps.onnx": b"scrfd " * 80,
    "insightface/inswapper_128.onnx": b"swap " * 70,
    "ultralytics/bbox/face_yolov8m.pt": b"yolo bbox " * 60,
    "ultralytics/segm/person_yolov8m-seg.pt": b"yolo segm " * 50,
    "sams/sam_vit_b_01ec64.pth": b"sam " * 40,
    "LLM/Florence-2-base/model.safetensors": b"florence " * 30,
    "LLM/Florence-2-base/config.json": b'{"model_type": "florence2"}',
    "ipadapter/ip-adapter-plus_sd15.safetensors": b"ipa " * 20,
}
OTHER = {"loras/a.safetensors": b"lora " * 10, "ipadapter/half.safetensors.part": b"partial"}
CUSTOM = {rel: as_model(rel, data) for rel, data in CUSTOM.items()}    # valid models: the audit passes them
OTHER = {rel: as_model(rel, data) for rel, data in OTHER.items()}
NAMES = ["LLM", "insightface", "ipadapter", "sams", "ultralytics"]


@pytest.fixture
def pod(tmp_path):
    comfyui = tmp_path / "ComfyUI"
    for rel, data in {**CUSTOM, **OTHER}.items():
        p = comfyui / "models" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (comfyui / "extra_model_paths.yaml").write_text("mine:\n  base_path: /opt/m\n  vae: vae\n")
    return comfyui, tmp_path / "store"


def args(pod, *extra):
    comfyui, store = pod
    return ["--comfyui", comfyui, "--target", store, *extra]


def test_plan_explains_each_custom_folder_in_json_and_table(pod, cli_env):
    doc = json.loads(run_cli(["plan", *args(pod, "--format", "json")], cli_env).stdout)
    folders = {c["name"]: c for c in doc["custom_folders"]}
    assert sorted(folders) == NAMES
    comfyui, store = pod
    ins = folders["insightface"]
    assert (ins["files"], ins["stay"], ins["listed_in_yaml"], ins["link_back"]) == (3, 0, True, True)
    assert (ins["source"], ins["destination"]) == (f"{comfyui}/models/insightface", f"{store}/insightface")
    assert ins["note"].startswith(f"custom-node folder insightface: ComfyUI does not know it; 3 files moved to "
                                  f"{store}/insightface; listed in the YAML as `insightface: insightface`; "
                                  "a symlink at each old place keeps nodes that open ComfyUI/models/insightface "
                                  "directly working")
    assert (folders["ipadapter"]["files"], folders["ipadapter"]["stay"]) == (1, 1)
    assert "1 stay where they are" in folders["ipadapter"]["note"]
    assert (folders["LLM"]["files"], folders["ultralytics"]["files"]) == (2, 2)
    for name in NAMES:
        assert f"+  {name}: {name}\n" in doc["yaml"]["diff"]
    table = run_cli(["plan", *args(pod)], cli_env).stdout
    for name in NAMES:
        assert f"custom-node folder {name}: ComfyUI does not know it" in table


@pytest.mark.parametrize("extra, says", [
    (["--no-link-back"], "no symlink left (--no-link-back): nodes that open ComfyUI/models/sams directly lose"),
    (["--mode", "copy"], "the files also stay in ComfyUI/models/sams, so nodes that open it directly keep working"),
])
def test_plan_says_what_happens_without_link_back(pod, cli_env, extra, says):
    doc = json.loads(run_cli(["plan", *args(pod, "--format", "json", *extra)], cli_env).stdout)
    sams = next(c for c in doc["custom_folders"] if c["name"] == "sams")
    assert says in sams["note"] and sams["link_back"] is False


def test_run_migrates_lists_and_links_back_then_rollback_restores(pod, cli_env):
    comfyui, store = pod
    before = snapshot(comfyui, store)
    run_cli(["run", *args(pod, "--yes")], cli_env)
    models = comfyui / "models"
    for rel, data in CUSTOM.items():
        dst, old = store / rel, models / rel
        assert dst.is_file() and not dst.is_symlink() and dst.read_bytes() == data
        # the old place: a relative symlink to the store, read by nodes that hard-code ComfyUI/models/<name>
        assert old.is_symlink() and not os.path.isabs(os.readlink(old))
        assert os.path.samefile(old, dst)
    assert (models / "ipadapter/half.safetensors.part").read_bytes() == b"partial"   # not migrated, stays
    # insightface's FaceAnalysis globs <root>/models/<name>/*.onnx below ComfyUI/models/insightface
    found = sorted(os.path.basename(p) for p in glob.glob(str(models / "insightface/models/antelopev2/*.onnx")))
    assert found == ["glintr100.onnx", "scrfd_10g_bnkps.onnx"]
    # ComfyUI registers each listed folder as a category (no extension filter) searching the store
    text = (comfyui / "extra_model_paths.yaml").read_text()
    section = yaml.safe_load(text)["comfy_migrate"]
    assert all(section[n] == n for n in NAMES)
    order = comfy.search_folders([(str(comfyui / "extra_model_paths.yaml"), text)], str(models))
    for rel in CUSTOM:
        name, rest = rel.split("/", 1)
        assert order[name] == [str(store / name)]
        assert os.path.isfile(os.path.join(order[name][0], rest))
    run_cli(["verify", "--comfyui", comfyui, "--target", store], cli_env)

    run_cli(["rollback", "--target", store, "--yes"], cli_env)
    assert_same(before, snapshot(comfyui, store), "after rollback")


def test_cross_filesystem_custom_folders_copy_link_back_and_roll_back(tmp_path, other_fs, cli_env):
    comfyui = tmp_path / "ComfyUI"
    for rel, data in CUSTOM.items():
        p = comfyui / "models" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    store = other_fs / "store"
    before = snapshot(comfyui, store)
    run_cli(["run", "--comfyui", comfyui, "--target", store, "--yes"], cli_env)
    for rel, data in CUSTOM.items():
        old = comfyui / "models" / rel
        assert old.is_symlink() and old.read_bytes() == data and os.path.samefile(old, store / rel)
    run_cli(["rollback", "--target", store, "--yes"], cli_env)
    after = snapshot(comfyui, store)
    # the quarantine folder a cross-filesystem move leaves in the source is our own state
    after["dirs"] = {d for d in after["dirs"] if ".comfy-migrate" not in d}
    assert_same(before, after, "after rollback")


def test_second_run_leaves_the_link_back_symlinks_alone(pod, cli_env):
    comfyui, store = pod
    run_cli(["run", *args(pod, "--yes")], cli_env)
    links = {rel: os.readlink(comfyui / "models" / rel) for rel in CUSTOM}
    proc = run_cli(["run", *args(pod, "--yes")], cli_env)
    assert "nothing to do" in proc.stderr
    assert {rel: os.readlink(comfyui / "models" / rel) for rel in CUSTOM} == links
