"""The pod's saved workflows: which models they name, whether each loads, which no workflow uses."""
from __future__ import annotations

import json

from conftest import FIXTURES, run_cli, snapshot_tree

from migrate import workflows as wf

I2V = (FIXTURES / "workflows" / "wan22_i2v.json").read_text()
S2V = (FIXTURES / "workflows" / "wan22_s2v_api.json").read_text()


def names(w: wf.Workflow) -> list:
    return [(r.category, r.name) for r in w.refs]


def test_ui_format_loader_widgets_become_categorised_refs():
    w = wf.parse_workflow("i2v.json", I2V)
    assert w.format == "ui" and not w.error
    pod = {"diffusion_models": {"wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"}}
    got = wf.assign_categories(w, pod)
    assert names(got) == [
        ("diffusion_models", "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"),
        ("diffusion_models", "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"),
        ("loras", "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors"),
        ("loras", "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors"),
        ("text_encoders", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
        ("vae", "wan_2.1_vae.safetensors"),
        ("clip_vision", "clip_vision_h.safetensors"),
    ]
    # the download URL the workflow carries in properties.models reaches its reference
    assert got.refs[0].url.startswith("https://huggingface.co/")
    # example.png (LoadImage) and the Note's text are not models
    assert not any("example.png" in r.name or "Put " in r.name for r in w.refs)


def test_api_format_inputs_and_a_custom_node_matched_by_the_pods_names():
    w = wf.parse_workflow("s2v.json", S2V)
    assert w.format == "api"
    pod = {"diffusion_models": {"Wan2_2-Animate-14B_fp8_e4m3fn_scaled_KJ.safetensors"}}
    got = names(wf.assign_categories(w, pod))
    assert ("diffusion_models", "Wan2_2-Animate-14B_fp8_e4m3fn_scaled_KJ.safetensors") in got   # custom node
    assert ("audio_encoders", "wav2vec2_large_english_fp16.safetensors") in got
    assert ("loras", "wan2.2_s2v_lightx2v_4steps_lora.safetensors") in got                       # missing on the pod
    assert not any(n == "speech.wav" for _, n in got)
    # a custom node's value that names no model of the pod is not a reference
    alone = names(wf.assign_categories(w, {}))
    assert not any("Animate" in n for _, n in alone)


def test_loader_categories_follow_the_pod_and_the_extension():
    doc = {"nodes": [{"type": "VAELoader", "widgets_values": ["taesd_decoder.pth"]},
                     {"type": "CheckpointLoader", "widgets_values": ["v1-inference.yaml", "sd15.safetensors"]},
                     {"type": "LoraLoader", "widgets_values": ["sub\\dir\\x.safetensors", 1, 1]}]}
    w = wf.assign_categories(wf.parse_workflow("x.json", json.dumps(doc)), {"vae_approx": {"taesd_decoder.pth"}})
    assert names(w) == [("vae_approx", "taesd_decoder.pth"), ("configs", "v1-inference.yaml"),
                        ("checkpoints", "sd15.safetensors"), ("loras", "sub/dir/x.safetensors")]


def test_unreadable_files_are_reported_not_raised():
    assert wf.parse_workflow("a.json", "{not json").format == "unreadable"
    assert wf.parse_workflow("b.json", "[1, 2]").error
    assert wf.parse_workflow("c.json", '{"nodes": "x"}').format == "unreadable"


def test_report_marks_ok_changes_missing_and_prices_the_unused():
    w = wf.Workflow("w.json", "ui", (wf.ModelRef("UNETLoader", "a.safetensors", "diffusion_models"),
                                     wf.ModelRef("LoraLoader", "b.safetensors", "loras"),
                                     wf.ModelRef("LoraLoader", "gone.safetensors", "loras", "https://x/gone")))
    before = {("diffusion_models", "a.safetensors"): ("/m/unet/a.safetensors", 10 ** 9),
              ("loras", "b.safetensors"): ("/m/loras/b.safetensors", 10 ** 6),
              ("vae", "unused.safetensors"): ("/m/vae/unused.safetensors", 2 * 10 ** 9)}
    doc = wf.workflow_doc([w], before, {("loras", "b.safetensors"): "loads other bytes"},
                          {k: v[1] for k, v in before.items()}, 0.07)
    status = {m["name"]: m["status"] for m in doc["workflows"][0]["models"]}
    assert status == {"a.safetensors": "ok", "b.safetensors": "changes", "gone.safetensors": "missing"}
    assert "https://x/gone" in doc["workflows"][0]["models"][2]["note"]
    assert doc["missing"] == [{"category": "loras", "name": "gone.safetensors"}]
    assert doc["unused"] == [{"category": "vae", "name": "unused.safetensors", "size": 2 * 10 ** 9,
                              "cost_per_month": 0.14}]
    assert doc["unused_cost_per_month"] == 0.14


def test_workflows_command_on_the_demo_pod_reads_and_never_changes_them(pod, cli_env):
    user = pod.comfyui / "user"
    before = snapshot_tree(user)
    doc = json.loads(run_cli(["workflows", "--comfyui", pod.comfyui, "--format", "json"], cli_env).stdout)
    assert [w["path"].split("/workflows/")[1] for w in doc["workflows"]] == ["sound/wan22_s2v_api.json",
                                                                             "wan22_i2v.json"]
    assert doc["missing"] == [{"category": "loras", "name": "wan2.2_s2v_lightx2v_4steps_lora.safetensors"}]
    unused = {u["name"] for u in doc["unused"]}
    assert "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors" in unused
    assert "wan_2.1_vae.safetensors" not in unused
    text = run_cli(["workflows", "--comfyui", pod.comfyui, "--price-per-gb-month", "0.1"], cli_env).stdout
    assert "MISSING loras/wan2.2_s2v_lightx2v_4steps_lora.safetensors" in text and "$0.1/GB-month" in text
    assert snapshot_tree(user) == before
    bad = run_cli(["workflows", "--comfyui", pod.comfyui, "--price-per-gb-month", "-1"], cli_env, check=None)
    assert bad.returncode == 2
