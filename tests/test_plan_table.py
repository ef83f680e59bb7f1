"""The plan table is for people: it fits 120 columns, groups files by folder, counts skips."""
from __future__ import annotations

import json
import os
import re

from conftest import make_pod, run_cli

NAMES = [  # real model names of WAN 2.2 / SDXL / Flux pods (lengths as they come)
    "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
    "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_ti2v_5B_fp16.safetensors",
    "Wan2_2-Animate-14B_fp8_e4m3fn_scaled_KJ.safetensors", "flux1-dev-fp8-e4m3fn.safetensors",
    "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors",
    "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors", "sd_xl_base_1.0_0.9vae.safetensors",
    "Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank32.safetensors", "4x-UltraSharp.pth",
]
FOLDERS = ["diffusion_models", "loras", "checkpoints", "vae", "text_encoders", "clip_vision", "upscale_models",
           "controlnet", "audio_encoders", "loras/wan22/i2v"]


def sixty_model_pod(root) -> tuple:
    files = []
    for i in range(60):
        folder = FOLDERS[i % len(FOLDERS)]
        base = NAMES[i % len(NAMES)]
        stem, ext = base.rsplit(".", 1)
        files.append({"path": f"models/{folder}/{stem}_v{i}.{ext}", "kib": 4})
    files += [{"path": "models/checkpoints/put_checkpoints_here", "kind": "empty"},
              {"path": "models/loras/put_loras_here", "kind": "empty"},
              {"path": "models/loras/dl.safetensors.part", "kib": 4}]
    spec = {"comfyui": "ComfyUI", "target": "store", "files": files}
    path = root / "spec.json"
    path.write_text(json.dumps(spec))
    return make_pod.build(str(root / "pod"), spec_path=str(path))


def table_lines(text: str) -> list:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("----"))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].strip())
    return lines[start - 1:end]


def test_the_plan_table_of_a_60_model_pod_fits_120_columns(tmp_path, cli_env):
    comfyui, store = sixty_model_pod(tmp_path)
    text = run_cli(["plan", "--comfyui", comfyui, "--target", store], cli_env).stdout
    rows = table_lines(text)
    assert len(rows) >= 60 and max(map(len, rows)) <= 120, max(rows, key=len)
    assert not any(comfyui in r or store in r for r in rows)                      # the roots are said once, above
    assert re.search(r"^ +loras/ *$", text, re.M) and "  wan22/i2v/" in text      # a folder's row, then its files
    assert "  2 skipped: ComfyUI placeholder" in text and "1 skipped: incomplete download" in text
    verbose = run_cli(["-v", "plan", "--comfyui", comfyui, "--target", store], cli_env).stdout
    assert "put_loras_here" in verbose and "skipped:" not in verbose
    for name in NAMES[:3]:        # shortened in the middle at most: both ends stay readable
        stem = name.rsplit(".", 1)[0]
        assert stem[:20] in text


def test_names_that_are_already_hardlinks_save_nothing(tmp_path, cli_env):
    models = tmp_path / "ComfyUI" / "models"
    (models / "loras").mkdir(parents=True)
    (models / "checkpoints").mkdir()
    (tmp_path / "ComfyUI" / "main.py").write_text("")
    (models / "loras" / "a.bin").write_bytes(b"\x00" * 4096)
    os.link(models / "loras" / "a.bin", models / "checkpoints" / "a.bin")   # one file, two names
    (models / "loras" / "copy.bin").write_bytes(b"\x00" * 4096)                      # a real duplicate
    doc = json.loads(run_cli(["plan", "--comfyui", tmp_path / "ComfyUI", "--target", tmp_path / "store",
                              "--format", "json"], cli_env).stdout)
    assert doc["totals"]["dedup_saves_bytes"] == 4096          # the copy, not the second name of a
