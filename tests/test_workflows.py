"""The pod's saved workflows: which models they name, whether each loads, which no workflow uses."""
from __future__ import annotations

import json
import os

from conftest import FIXTURES, run_cli, snapshot_tree

from migrate.core import workflows as wf

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
    # a custom node's value with a model extension the pod lacks is still a reference: missing, folder unknown
    alone = names(wf.assign_categories(w, {}))
    assert (None, "Wan2_2-Animate-14B_fp8_e4m3fn_scaled_KJ.safetensors") in alone


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
    assert doc["unused"] == [{"category": "vae", "name": "unused.safetensors", "size": 2 * 10 ** 9, "frees": 2 * 10 ** 9,
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
    assert "MISSING -          loras/wan2.2_s2v_lightx2v_4steps_lora.safetensors" in text and "$0.1/GB-month" in text
    assert snapshot_tree(user) == before
    bad = run_cli(["workflows", "--comfyui", pod.comfyui, "--price-per-gb-month", "-1"], cli_env, check=None)
    assert bad.returncode == 2


# --- ComfyUI's official templates (fixtures/workflows/templates, MIT, see its README) -------------------------------
# What each template needs, written by hand from the templates' notes and model lists (not from our reader).
TEMPLATES = FIXTURES / "workflows" / "templates"
NEEDS = {
    "utility_birefnet_remove_background": {("background_removal", "birefnet.safetensors")},
    "utility_moge3_geometry_estimation": {("geometry_estimation", "moge_3_vitg_fp16.safetensors")},
    "utility_depth_anything3_image_depth_estimation": {("geometry_estimation", "depth_anything_3_mono_large.safetensors")},
    "video_kandinsky5_t2v": {("text_encoders", "clip_l.safetensors"), ("text_encoders", "qwen_2.5_vl_7b_fp8_scaled.safetensors"),
                             ("vae", "hunyuan_video_vae_bf16.safetensors"),
                             ("diffusion_models", "kandinsky5lite_t2v_sft_5s.safetensors")},
    "utility_video_segment_sam3": {("checkpoints", "sam3.1_multiplex_fp16.safetensors")},
    "image_boogu_image_0_1_turbo_t2i": {("vae", "ae.safetensors"), ("diffusion_models", "boogu_image_turbo_fp8_scaled.safetensors"),
                                        ("text_encoders", "qwen3vl_8b_fp8_scaled.safetensors")},
    "utility_video_frame_interpolation": {("frame_interpolation", "film_net_fp16.safetensors")},
    "flux_dev_checkpoint_example": {("vae", "ae.safetensors"), ("text_encoders", "clip_l.safetensors"),
                                    ("text_encoders", "t5xxl_fp16.safetensors"), ("diffusion_models", "flux1-dev.safetensors")},
    "flux1_krea_dev": {("vae", "ae.safetensors"), ("text_encoders", "clip_l.safetensors"), ("text_encoders", "t5xxl_fp16.safetensors"),
                       ("diffusion_models", "flux1-krea-dev_fp8_scaled.safetensors")},
    "image_z_image_turbo": {("vae", "ae.safetensors"), ("text_encoders", "qwen_3_4b.safetensors"),
                            ("diffusion_models", "z_image_turbo_bf16.safetensors")},
    "image_netayume_lumina_t2i": {("checkpoints", "NetaYumev35_pretrained_all_in_one.safetensors")},
    "3d_hunyuan3d-v2.1": {("checkpoints", "hunyuan_3d_v2.1.safetensors")},
    "image_pixeldit_t2i": {("text_encoders", "gemma_2_2b_it_elm_bf16.safetensors"),
                           ("diffusion_models", "pixeldit_1300m_1024px_bf16.safetensors")},
    "flux_fill_inpaint_example": {("vae", "ae.safetensors"), ("text_encoders", "clip_l.safetensors"),
                                  ("text_encoders", "t5xxl_fp16.safetensors"), ("diffusion_models", "flux1-fill-dev.safetensors")},
    "llm_qwen3_text_gen": {("text_encoders", "qwen_3_4b.safetensors")},
    "sd3.5_simple_example": {("checkpoints", "sd3.5_large_fp8_scaled.safetensors")},
    "utility-gan_upscaler": {("upscale_models", "RealESRGAN_x4plus.safetensors")},
    "flux_schnell_full_text_to_image": {("vae", "ae.safetensors"), ("text_encoders", "clip_l.safetensors"),
                                        ("text_encoders", "t5xxl_fp16.safetensors"),
                                        ("diffusion_models", "flux1-schnell.safetensors")},
    "hidream_i1_fast": {("vae", "ae.safetensors"), ("text_encoders", "clip_g_hidream.safetensors"),
                        ("text_encoders", "clip_l_hidream.safetensors"),
                        ("text_encoders", "llama_3.1_8b_instruct_fp8_scaled.safetensors"),
                        ("text_encoders", "t5xxl_fp8_e4m3fn_scaled.safetensors"),
                        ("diffusion_models", "hidream_i1_fast_fp8.safetensors")},
    "video_humo": {("diffusion_models", "humo_17B_fp8_e4m3fn.safetensors"),
                   ("loras", "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors"),
                   ("text_encoders", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"), ("vae", "wan_2.1_vae.safetensors"),
                   ("audio_encoders", "whisper_large_v3_fp16.safetensors")},
    "image_qwen_image_controlnet_patch": {("loras", "Qwen-Image-Lightning-4steps-V1.0.safetensors"),
                                          ("text_encoders", "qwen_2.5_vl_7b_fp8_scaled.safetensors"),
                                          ("model_patches", "qwen_image_canny_diffsynth_controlnet.safetensors"),
                                          ("diffusion_models", "qwen_image_fp8_e4m3fn.safetensors"),
                                          ("vae", "qwen_image_vae.safetensors")},
    "utility_sam3d_body": {("geometry_estimation", "moge_2_vitl_normal_fp16.safetensors"),
                           ("diffusion_models", "rt_detr_v4-x-hgnet_fp32.safetensors"),
                           ("detection", "sam_3d_body_dinov3_bf16.safetensors"),
                           ("checkpoints", "sam3.1_multiplex_fp16.safetensors")},
}


def test_the_sample_is_the_fixture_folder():
    assert {p.stem for p in TEMPLATES.glob("*.json")} == set(NEEDS)
    assert sum(len(v) for v in NEEDS.values()) == 58


def _template_pod(tmp_path, present: bool):
    comfyui = tmp_path / "ComfyUI"
    (comfyui / "models").mkdir(parents=True)
    flows = comfyui / "user" / "default" / "workflows"
    flows.mkdir(parents=True)
    for p in sorted(TEMPLATES.glob("*.json")):
        (flows / p.name).write_bytes(p.read_bytes())
    extras = {("loras", "an_unused_lora.safetensors"), ("vae", "old_vae.safetensors")}
    for cat, name in (set().union(*NEEDS.values()) if present else set()) | extras:
        f = comfyui / "models" / cat / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x" * 100)
    (comfyui / "models" / "diffusers").mkdir()
    (comfyui / "models" / "diffusers" / "put_diffusers_models_here").write_bytes(b"")
    return comfyui, extras


def test_official_templates_no_miss_no_false_hit_no_needed_model_unused(tmp_path, cli_env):
    for present in (True, False):
        comfyui, extras = _template_pod(tmp_path / str(present), present)
        doc = json.loads(run_cli(["workflows", "--comfyui", comfyui, "--format", "json"], cli_env).stdout)
        got = {w["path"].rsplit("/", 1)[1][:-5]: {(m["category"], m["name"]) for m in w["models"]}
               for w in doc["workflows"]}
        assert got == NEEDS                                     # no miss, no false hit, one row per model
        for w in doc["workflows"]:
            assert len(w["models"]) == len(NEEDS[w["path"].rsplit("/", 1)[1][:-5]]) and not w["error"]
            assert {m["status"] for m in w["models"]} == ({"ok"} if present else {"missing"})
        assert {(u["category"], u["name"]) for u in doc["unused"]} == extras     # placeholders never listed
        assert doc["unused_bytes"] == 200 and "only when nothing names it" in doc["unused_rule"]


# --- subgraphs, node packs, hostile files ----------------------------------------------------------------------------

def _node(kind, *values, **props):
    return {"id": 1, "type": kind, "widgets_values": list(values), "properties": props}


def test_nested_subgraphs_and_a_promoted_widget_give_one_row_per_model():
    inner = {"id": "bbbb", "nodes": [_node("LoraLoaderModelOnly", "deep/style.safetensors", 1.0)]}
    outer = {"id": "aaaa", "nodes": [_node("UNETLoader", "flux1-dev.safetensors", "default"), _node("bbbb")],
             "definitions": {"subgraphs": [inner]}}
    doc = {"nodes": [_node("aaaa", "flux1-dev.safetensors", proxyWidgets=[["3", "unet_name"]])],
           "definitions": {"subgraphs": [outer]}}
    got = wf.assign_categories(wf.parse_workflow("x.json", json.dumps(doc)), {})
    assert names(got) == [("diffusion_models", "flux1-dev.safetensors"), ("loras", "deep/style.safetensors")]


def test_rgthree_power_lora_loader_ui_and_api():
    ui = {"nodes": [_node("Power Lora Loader (rgthree)", {}, {"type": "PowerLoraLoaderHeaderWidget"},
                          {"on": True, "lora": "wan\\fast.safetensors", "strength": 1},
                          {"on": False, "lora": "detail.safetensors", "strength": 0.5}, {}, "")]}
    assert names(wf.assign_categories(wf.parse_workflow("u.json", json.dumps(ui)), {})) == [
        ("loras", "wan/fast.safetensors"), ("loras", "detail.safetensors")]
    api = {"1": {"class_type": "Power Lora Loader (rgthree)",
                 "inputs": {"PowerLoraLoaderHeaderWidget": {"type": "PowerLoraLoaderHeaderWidget"},
                            "lora_1": {"on": True, "lora": "a.safetensors", "strength": 1}, "model": ["2", 0]}}}
    assert names(wf.assign_categories(wf.parse_workflow("a.json", json.dumps(api)), {})) == [("loras", "a.safetensors")]


def test_gguf_loaders_and_an_unknown_node_naming_a_model():
    doc = {"nodes": [_node("UnetLoaderGGUF", "wan2.2-Q4_K_M.gguf"),
                     _node("DualCLIPLoaderGGUF", "t5-Q8.gguf", "clip_l.safetensors", "flux"),
                     _node("SomePackLoader", "mystery.safetensors", "not a model.txt", "https://x/y.safetensors"),
                     _node("OtherPack", "on_the_pod.pth")]}
    got = wf.assign_categories(wf.parse_workflow("g.json", json.dumps(doc)), {"upscale_models": {"on_the_pod.pth"}})
    assert names(got) == [("diffusion_models", "wan2.2-Q4_K_M.gguf"), ("text_encoders", "t5-Q8.gguf"),
                          ("text_encoders", "clip_l.safetensors"), ("upscale_models", "on_the_pod.pth"),
                          (None, "mystery.safetensors")]


def test_a_10000_deep_json_and_a_huge_subgraph_nesting_are_one_line_each():
    deep = wf.parse_workflow("deep.json", "[" * 10_000 + "]" * 10_000)
    assert deep.format == "unreadable" and "deep" in deep.error
    deep_obj = wf.parse_workflow("deep2.json", '{"nodes": [], "x": ' + '{"a": ' * 10_000 + "1" + "}" * 10_001)
    assert deep_obj.format in ("ui", "unreadable")
    sub = {"id": "s0", "nodes": [_node("LoraLoader", "last.safetensors")]}
    for i in range(1, 200):
        sub = {"id": f"s{i}", "nodes": [_node(f"s{i - 1}")], "definitions": {"subgraphs": [sub]}}
    nested = wf.parse_workflow("n.json", json.dumps({"nodes": [_node("s199")], "definitions": {"subgraphs": [sub]}}))
    assert nested.format == "ui" and "nested deeper" in nested.error


def _hostile_pod(tmp_path):
    comfyui = tmp_path / "ComfyUI"
    loras = comfyui / "models" / "loras"
    loras.mkdir(parents=True)
    (loras / "used.safetensors").write_bytes(b"u" * 1000)
    os.link(loras / "used.safetensors", loras / "hardlink_of_used.safetensors")
    (loras / "alone.safetensors").write_bytes(b"a" * 300)
    os.symlink("alone.safetensors", loras / "link_to_alone.safetensors")
    os.symlink(".", loras / "self")                                  # a symlink loop
    (comfyui / "models" / "unet").mkdir()
    (comfyui / "models" / "unet" / "spare-Q4.gguf").write_bytes(b"g" * 50)
    flows = comfyui / "user" / "default" / "workflows"
    flows.mkdir(parents=True)
    (flows / "ok.json").write_text(json.dumps({"nodes": [_node("LoraLoader", "used.safetensors", 1, 1)]}))
    (flows / "deep.json").write_text("[" * 10_000 + "]" * 10_000)
    (flows / "locked.json").write_text("{}")
    os.chmod(flows / "locked.json", 0)
    return comfyui


def test_workflows_command_on_a_hostile_pod_ends_with_one_line_per_bad_file(tmp_path, cli_env):
    comfyui = _hostile_pod(tmp_path)
    proc = run_cli(["workflows", "--comfyui", comfyui, "--format", "json"], cli_env, timeout=120)
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    errors = {w["path"].rsplit("/", 1)[1]: w["error"] for w in doc["workflows"]}
    assert "deep" in errors["deep.json"] and not errors["ok.json"]
    if os.geteuid() != 0:
        assert "cannot read" in errors["locked.json"]
    unused = {u["name"]: u["frees"] for u in doc["unused"]}
    # a hardlink of a used model and a symlink free nothing; the .gguf is listed; the loop is walked once
    assert unused["hardlink_of_used.safetensors"] == 0 and "used.safetensors" not in unused
    assert not any(n.startswith("self/") for n in unused)
    assert unused["link_to_alone.safetensors"] == 0 and unused["alone.safetensors"] == 300
    assert unused["spare-Q4.gguf"] == 50
    assert doc["unused_bytes"] == 350
    text = run_cli(["workflows", "--comfyui", comfyui], cli_env, timeout=120).stdout
    assert "deep.json: unreadable (JSON nested too deep to read)" in text


def test_plan_prints_the_probe_facts_and_custom_folder_notes_short_unless_verbose(pod, cli_env):
    short = run_cli(["plan", *pod.args()], cli_env).stdout
    full = run_cli(["plan", *pod.args(), "-v"], cli_env).stdout
    probe = next(line for line in short.splitlines() if " -> target: " in line)
    assert "hardlinks yes" not in probe and "(-v: what each allows)" in probe
    assert len(probe) - len(str(pod.models)) < 80                     # fits 120 columns on /workspace/... paths
    assert "hardlinks yes" in next(line for line in full.splitlines() if " -> target: " in line)
    notes = [line for line in short.splitlines() if line.startswith("custom-node folder ")]
    assert notes and all(line.endswith("(-v: in full)") and len(line) < 120 + len(str(pod.target)) for line in notes)
    assert any("keeps nodes" in line for line in full.splitlines() if line.startswith("custom-node folder "))


# --- manifests: what the workflows need, by SHA-256, checked on another pod (issue 24) --------------------------------

def _manifest_pod(root, files: dict, with_workflow: bool):
    comfyui = root / "ComfyUI"
    (comfyui / "models").mkdir(parents=True)
    for rel, data in files.items():
        (comfyui / "models" / rel).parent.mkdir(parents=True, exist_ok=True)
        (comfyui / "models" / rel).write_bytes(data)
    if with_workflow:
        flows = comfyui / "user" / "default" / "workflows"
        flows.mkdir(parents=True)
        (flows / "flux.json").write_text(json.dumps({"nodes": [
            _node("UNETLoader", "flux1-dev.safetensors", "default"), _node("VAELoader", "ae.safetensors"),
            _node("LoraLoader", "style/ink.safetensors", 1, 1)]}))
    return comfyui


def test_manifest_on_pod_a_checked_on_pod_b_with_one_model_swapped_and_one_missing(tmp_path, cli_env):
    import hashlib
    files = {"diffusion_models/flux1-dev.safetensors": b"U" * 70_000, "vae/ae.safetensors": b"V" * 3000,
             "loras/style/ink.safetensors": b"L" * 5000}
    pod_a = _manifest_pod(tmp_path / "a", files, with_workflow=True)
    manifest = tmp_path / "needs.json"
    run_cli(["workflows", "--comfyui", pod_a, "--manifest", manifest], cli_env)
    doc = json.loads(manifest.read_text())
    models = {m["name"]: m for w in doc["workflows"] for m in w["models"]}
    assert doc["workflows"][0]["path"] == "default/workflows/flux.json"
    assert models["ae.safetensors"] == {"category": "vae", "name": "ae.safetensors", "size": 3000,
                                        "sha256": hashlib.sha256(b"V" * 3000).hexdigest()}
    assert models["flux1-dev.safetensors"]["sha256"] == hashlib.sha256(b"U" * 70_000).hexdigest()
    # made again: the same SHA-256s, now from the digest cache
    run_cli(["workflows", "--comfyui", pod_a, "--manifest", tmp_path / "again.json"], cli_env)
    assert json.loads((tmp_path / "again.json").read_text()) == doc

    # pod B (no workflows of its own): the UNet has other bytes of the same size, the LoRA is missing
    pod_b = _manifest_pod(tmp_path / "b", {"diffusion_models/flux1-dev.safetensors": b"u" * 70_000,
                                           "vae/ae.safetensors": b"V" * 3000}, with_workflow=False)
    before = snapshot_tree(pod_b)
    proc = run_cli(["workflows", "--comfyui", pod_b, "--check", manifest, "--format", "json"], cli_env, check=1)
    verdicts = {m["name"]: m["verdict"] for w in json.loads(proc.stdout)["workflows"] for m in w["models"]}
    assert verdicts == {"flux1-dev.safetensors": "other", "ae.safetensors": "same", "style/ink.safetensors": "missing"}
    text = run_cli(["workflows", "--comfyui", pod_b, "--check", manifest], cli_env, check=1).stdout
    assert "vae/ae.safetensors: present with the same bytes" in text
    assert "diffusion_models/flux1-dev.safetensors: present with other bytes" in text
    assert "loras/style/ink.safetensors: missing" in text
    assert snapshot_tree(pod_b) == before
    # pod A itself: all the same, exit 0
    run_cli(["workflows", "--comfyui", pod_a, "--check", manifest], cli_env)

    # a garbled or foreign manifest: one clear line, exit 3 (bad input)
    for bad in ('{"manifest": 1, "workflows": [', '{"nodes": []}',
                '{"manifest": 1, "workflows": [{"path": "x", "models": [{"name": 3}]}]}'):
        (tmp_path / "bad.json").write_text(bad)
        proc = run_cli(["workflows", "--comfyui", pod_b, "--check", tmp_path / "bad.json"], cli_env, check=3)
        assert "Traceback" not in proc.stderr and "is not a workflows manifest" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) <= 2


# --- every place a model can be named: users, custom-node examples, ComfyUI's templates (ComfyUI 0.33's rules) -------

def _lora_flow(*loras):
    return json.dumps({"nodes": [_node("LoraLoader", name, 1, 1) for name in loras]})


def _named_pod(tmp_path, layout: str):
    """A pod whose models are named by two users' workflows, by custom-node packs' example workflows and by
    ComfyUI's installed templates (layout "split": the JSON package of comfyui-workflow-templates >= 0.3,
    "legacy": the templates folder inside the package below 0.3, "none": no package)."""
    comfyui = tmp_path / "ComfyUI"
    models = comfyui / "models"
    for rel in ("loras/mine.safetensors", "loras/alice.safetensors", "loras/pack_demo.safetensors",
                "loras/other_example.safetensors", "loras/hidden_pack.safetensors", "loras/nested_example.safetensors",
                "loras/truly_unused.safetensors", "diffusion_models/flux1-dev.safetensors", "vae/ae.safetensors",
                "loras/my_blueprint.safetensors", "loras/pack_blueprint.safetensors", "loras/core_blueprint.safetensors"):
        (models / rel).parent.mkdir(parents=True, exist_ok=True)
        (models / rel).write_bytes(b"m" * 100)
    for user, name in (("default", "mine"), ("alice", "alice")):
        (comfyui / "user" / user / "workflows").mkdir(parents=True)
        (comfyui / "user" / user / "workflows" / f"{name}.json").write_text(_lora_flow(f"{name}.safetensors"))
    nodes = comfyui / "custom_nodes"
    for rel, lora in (("ComfyUI-Pack/example_workflows/demo.json", "pack_demo"),
                      ("OtherPack/examples/ex.json", "other_example"),
                      (".hidden-pack/example_workflows/h.json", "hidden_pack"),       # glob's * skips it
                      ("ComfyUI-Pack/example_workflows/deeper/n.json", "nested_example")):  # one level only
        (nodes / rel).parent.mkdir(parents=True, exist_ok=True)
        (nodes / rel).write_text(_lora_flow(f"{lora}.safetensors"))
    # subgraph blueprints (the node library's): a user's published one, a pack's, ComfyUI's own
    for rel, lora in (("user/alice/subgraphs/mine.json", "my_blueprint"),
                      ("custom_nodes/ComfyUI-Pack/subgraphs/bp.json", "pack_blueprint"),
                      ("blueprints/Core Blueprint.json", "core_blueprint")):
        (comfyui / rel).parent.mkdir(parents=True, exist_ok=True)
        (comfyui / rel).write_text(_lora_flow(f"{lora}.safetensors"))
    site = comfyui / ".venv" / "lib" / "python3.12" / "site-packages"
    site.mkdir(parents=True)
    (comfyui / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    if layout != "none":
        version, folder = ("0.1.95", site / "comfyui_workflow_templates" / "templates") if layout == "legacy" \
            else ("0.11.41", site / "comfyui_workflow_templates_json" / "templates")
        if layout != "bare":                     # "bare": the JSON package without the meta package's version
            (site / f"comfyui_workflow_templates-{version}.dist-info").mkdir()
            (site / f"comfyui_workflow_templates-{version}.dist-info" / "METADATA").write_text(
                f"Metadata-Version: 2.4\nName: comfyui-workflow-templates\nVersion: {version}\n\n")
        folder.mkdir(parents=True)
        (folder / "fuse_options.json").write_text('{"keys": ["title"]}')     # beside them, no workflow
        (folder / "flux_dev_checkpoint_example.json").write_bytes(
            (TEMPLATES / "flux_dev_checkpoint_example.json").read_bytes())
        (folder / "index.json").write_text("[]")                     # the menu's index, not a workflow
    return comfyui


def test_unused_reads_every_user_custom_node_examples_and_comfyuis_templates(tmp_path, cli_env):
    for layout in ("split", "legacy", "bare", "none"):
        comfyui = _named_pod(tmp_path / layout, layout)
        doc = json.loads(run_cli(["workflows", "--comfyui", comfyui, "--format", "json"], cli_env).stdout)
        assert [w["path"].split("/user/")[1] for w in doc["workflows"]] == ["alice/workflows/alice.json",
                                                                              "default/workflows/mine.json"]
        templated = {u["name"]: u["by"].rsplit("/", 1)[1] for u in doc["templated"]}
        unused = {u["name"] for u in doc["unused"]}
        from_templates = {"flux1-dev.safetensors": "flux_dev_checkpoint_example.json",
                          "ae.safetensors": "flux_dev_checkpoint_example.json"} if layout != "none" else {}
        assert templated == {"pack_demo.safetensors": "demo.json", "other_example.safetensors": "ex.json",
                             "my_blueprint.safetensors": "mine.json", "pack_blueprint.safetensors": "bp.json",
                             "core_blueprint.safetensors": "Core Blueprint.json", **from_templates}
        assert unused == {"truly_unused.safetensors", "hidden_pack.safetensors", "nested_example.safetensors",
                          *({"flux1-dev.safetensors", "ae.safetensors"} - set(from_templates))}
        assert doc["unused_bytes"] == 100 * len(unused)
        counts = {s["kind"]: s["workflows"] for s in doc["sources"]}
        assert not any(s["unreadable"] for s in doc["sources"])     # an index or options file is no template
        assert counts == {"user": 2, "custom_nodes": 2, "templates": 0 if layout == "none" else 1, "blueprints": 3}
        text = run_cli(["workflows", "--comfyui", comfyui], cli_env).stdout
        assert "how the unused list was made" in text and "saved workflows: 2 (" in text
        assert "custom-node example workflows: 2 (" in text
        if layout == "none":
            assert "ComfyUI's templates: none (not found: no comfyui-workflow-templates in " in text
        else:
            version = {"split": "0.11.41", "legacy": "0.1.95", "bare": "(version unknown)"}[layout]
            assert "ComfyUI's templates: 1 (comfyui-workflow-templates " in text
            where = next(s["where"] for s in doc["sources"] if s["kind"] == "templates")
            assert where.startswith(f"comfyui-workflow-templates {version} in {comfyui}/.venv/lib/python3.12/")
        assert f"{len(templated)} model(s) named only by a template" in text and "subgraph blueprints: 3 (" in text
        assert all(len(line) <= 120 for line in text.splitlines())


def test_workflow_tables_show_the_autov2_known_already_and_never_hash_to_get_it(tmp_path, cli_env):
    import hashlib
    files = {"diffusion_models/flux1-dev.safetensors": b"U" * 70_000, "vae/ae.safetensors": b"V" * 3000}
    comfyui = _manifest_pod(tmp_path, files, with_workflow=True)
    cache = cli_env["COMFY_MIGRATE_CACHE"]
    text = run_cli(["workflows", "--comfyui", comfyui], cli_env).stdout
    assert "  ok      -          vae/ae.safetensors" in text and "AutoV2" in text
    assert not os.path.exists(cache)                       # no silent hashing pass to fill the column
    run_cli(["workflows", "--comfyui", comfyui, "--manifest", tmp_path / "m.json"], cli_env)   # reads and caches
    short = hashlib.sha256(b"V" * 3000).hexdigest()[:10].upper()
    text = run_cli(["workflows", "--comfyui", comfyui], cli_env).stdout
    assert f"  ok      {short} vae/ae.safetensors" in text
    assert "MISSING -          loras/style/ink.safetensors" in text
    doc = json.loads(run_cli(["workflows", "--comfyui", comfyui, "--format", "json"], cli_env).stdout)
    got = {m["name"]: m["autov2"] for m in doc["workflows"][0]["models"]}
    assert got == {"ae.safetensors": short, "style/ink.safetensors": None,
                   "flux1-dev.safetensors": hashlib.sha256(b"U" * 70_000).hexdigest()[:10].upper()}
    page = tmp_path / "plan.html"
    run_cli(["plan", "--comfyui", comfyui, "--target", tmp_path / "target", "--report", page], cli_env)
    assert f'<code class="h">{short}</code>' in page.read_text().split("<h2>Workflows</h2>", 1)[1]


def test_hostile_workflow_files_are_one_line_each_in_workflows_and_the_report(tmp_path, cli_env):
    comfyui = tmp_path / "ComfyUI"
    (comfyui / "models" / "loras").mkdir(parents=True)
    (comfyui / "models" / "loras" / "a.safetensors").write_bytes(b"a" * 10)
    flows = comfyui / "user" / "default" / "workflows"
    flows.mkdir(parents=True)
    (comfyui / "user" / "empty" / "workflows").mkdir(parents=True)              # an empty workflows folder
    (flows / "folder.json").mkdir()                                              # a workflow that is a folder
    (flows / "zero.json").write_bytes(b"")
    (flows / "latin1.json").write_bytes(b'{"nodes": [{"type": "LoraLoader", "widgets_values": ["caf\xe9.safetensors"]}]}')
    (flows / "bom.json").write_bytes(b"\xef\xbb\xbf" + _lora_flow("a.safetensors").encode())
    (flows / "passwd.json").write_text(_lora_flow("../../etc/passwd", "../../../etc/passwd.safetensors"))
    os.mkfifo(flows / "fifo.json")                                               # never opened for a blocking read
    (flows / "huge.json").write_text(json.dumps({"nodes": [
        {"type": "LoraLoader", "widgets_values": ["b.safetensors", 1, 1], "properties": {"pad": "x" * 400}}] * 110_000}))
    assert (flows / "huge.json").stat().st_size > 50 << 20
    with open(flows / "too_big.json", "wb") as f:
        f.truncate(65 << 20)
    before = snapshot_tree(comfyui)
    proc = run_cli(["workflows", "--comfyui", comfyui], cli_env, timeout=120)
    assert "Traceback" not in proc.stderr + proc.stdout
    line = {ln.split(":", 1)[0].rsplit("/", 1)[-1]: ln for ln in proc.stdout.splitlines() if ln.startswith("default/")}
    assert line["zero.json"].endswith("unreadable (not JSON: Expecting value: line 1 column 1 (char 0))")
    assert line["latin1.json"].endswith("unreadable (not UTF-8 text (a bad byte at offset 57))")
    assert line["bom.json"].endswith(": 1 model(s)")
    assert line["passwd.json"].endswith(": 1 model(s)")               # the name without a model extension is no model
    assert "MISSING -          loras/../../../etc/passwd.safetensors: no file of this name" in proc.stdout
    assert line["fifo.json"].endswith("unreadable (cannot read: not a regular file)")
    assert line["huge.json"].endswith("1 model(s); read in part (more than 100000 nodes: the rest were not read)")
    assert line["too_big.json"].endswith("unreadable (larger than 64 MiB: not read)")
    assert "folder.json" not in line and "saved workflows: 7 (" in proc.stdout
    assert all(len(ln) <= 120 for ln in proc.stdout.splitlines())
    page = tmp_path / "plan.html"
    proc = run_cli(["plan", "--comfyui", comfyui, "--target", tmp_path / "target", "--report", page], cli_env,
                   timeout=120)
    assert "Traceback" not in proc.stderr
    text = page.read_text()
    assert "unreadable: not UTF-8 text" in text and "read in part: more than 100000 nodes" in text
    assert snapshot_tree(comfyui) == before
    (flows / "huge.json").unlink()            # 50 MB the kept tmp folders need not hold (a shared machine's disk)


def test_templates_found_in_the_python_env_of_the_running_comfyui(tmp_path, cli_env):
    import subprocess
    import sys
    import time
    comfyui = _named_pod(tmp_path, "none")
    (comfyui / "main.py").write_text("import time\ntime.sleep(120)\n")
    env = tmp_path / "elsewhere" / "env"                       # not in or beside the ComfyUI folder
    (env / "bin").mkdir(parents=True)
    os.symlink(sys.executable, env / "bin" / "python3")
    folder = env / "lib" / "python3.12" / "site-packages" / "comfyui_workflow_templates_json" / "templates"
    folder.mkdir(parents=True)
    (folder / "flux_dev_checkpoint_example.json").write_bytes((TEMPLATES / "flux_dev_checkpoint_example.json").read_bytes())
    (folder.parent.parent / "comfyui_workflow_templates-0.11.41.dist-info").mkdir()
    (folder.parent.parent / "comfyui_workflow_templates-0.11.41.dist-info" / "METADATA").write_text("Version: 0.11.41\n")
    doc = json.loads(run_cli(["workflows", "--comfyui", comfyui, "--format", "json"], cli_env).stdout)
    assert {s["kind"]: s["workflows"] for s in doc["sources"]}["templates"] == 0
    proc = subprocess.Popen([str(env / "bin" / "python3"), str(comfyui / "main.py")], cwd=str(comfyui))
    try:
        for _ in range(100):                                   # until /proc shows its command line
            if (open(f"/proc/{proc.pid}/cmdline", "rb").read().count(b"main.py")):
                break
            time.sleep(0.05)
        doc = json.loads(run_cli(["workflows", "--comfyui", comfyui, "--format", "json"], cli_env).stdout)
    finally:
        proc.kill()
        proc.wait()
    templates = next(s for s in doc["sources"] if s["kind"] == "templates")
    assert templates["workflows"] == 1 and str(env) in templates["where"]
    assert {u["name"] for u in doc["templated"]} >= {"flux1-dev.safetensors", "ae.safetensors"}
