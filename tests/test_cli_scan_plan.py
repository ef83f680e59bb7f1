"""`scan` and `plan` as a user runs them: a real subprocess on real trees in tmp_path."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import xxhash

from conftest import make_pod, past_racy_window, run_cli, snapshot_tree
from migrate import __version__
from migrate.core.errors import ExitCode


def plan_json(pod, env, *extra, check=0):
    proc = run_cli(["plan", *pod.args("--format", "json", *extra)], env, check=check)
    return json.loads(proc.stdout)


def actions_by_source(doc, root):
    root = str(root).rstrip("/") + "/"
    return {a["source"][len(root):]: a for a in doc["actions"]}


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- basics ------------------------------------------------------------------------------------------

def test_version(cli_env):
    proc = run_cli(["--version"], cli_env)
    assert proc.stdout.strip() == f"comfy-migrate, version {__version__}"


def _commands():
    from migrate.cli import cli
    return sorted(cli.commands)


@pytest.mark.parametrize("command", [None] + _commands())
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_of_every_command_has_usage_and_an_example(cli_env, command, flag):
    args = [command, flag] if command else [flag]
    proc = run_cli(args, cli_env)
    assert proc.stdout.startswith(f"Usage: comfy-migrate {command + ' ' if command else ''}")
    assert re.search(r"(?m)^\s+comfy-migrate \w+", proc.stdout), "no example command line in the help"
    assert proc.stderr == ""


def test_scan_and_plan_are_documented_commands():
    assert {"scan", "plan"} <= set(_commands())


# --- scan --------------------------------------------------------------------------------------------

def test_scan_table_shows_categories_custom_nodes_and_what_is_not_migrated(pod, cli_env):
    out = run_cli(["scan", "--comfyui", pod.comfyui], cli_env).stdout
    rows = {line.split("  ")[0].strip(): line.split() for line in out.splitlines() if line[:1].isalpha()}
    assert rows["diffusion_models"][1] == "4"      # 3 in diffusion_models/ + 1 in legacy unet/
    assert rows["text_encoders"][1:5] == ["2", "2.0", "MiB", "1"]   # clip/ + text_encoders/, one duplicate
    assert "insightface (custom nodes)" in out and "ultralytics (custom nodes)" in out
    for line in ("not migrated: checkpoints/put_checkpoints_here: ComfyUI placeholder",
                 "not migrated: loras/half_downloaded.safetensors.part: incomplete download",
                 "not migrated: vae/broken_empty.safetensors: empty file",
                 "not migrated: upscale_models/4x_foolhardy_Remacri.pth: symlink to "
                 "../loras/WanAnimate_relight_lora_fp16.safetensors"):
        assert line in out


def test_scan_json_lists_every_file_with_status_and_xxh3_digest(pod, cli_env):
    doc = json.loads(run_cli(["scan", "--source", pod.models, "--format", "json"], cli_env).stdout)
    assert doc["version"] == 1
    (root,) = doc["roots"]
    assert root["root"] == str(pod.models)
    files = {f["path"]: f for f in root["files"]}
    on_disk = {str(p.relative_to(pod.models)) for p in pod.models.rglob("*") if p.is_file() or p.is_symlink()}
    assert set(files) == on_disk
    for rel, f in files.items():
        path = pod.models / rel
        if f["status"] == "migrate":
            assert f["digest"] == xxhash.xxh3_128(path.read_bytes()).hexdigest()
            assert f["size"] == path.stat().st_size
        else:
            assert f["digest"] is None
    assert files["unet/Wan2_2-Animate-14B_fp8_e4m3fn_scaled_KJ.safetensors"]["category"] == "diffusion_models"
    assert files["clip/umt5_xxl_fp8_e4m3fn_scaled.safetensors"]["category"] == "text_encoders"
    assert (files["insightface/inswapper_128.onnx"]["category"], files["insightface/inswapper_128.onnx"]["custom"]) \
        == ("insightface", True)
    assert {rel: f["status"] for rel, f in files.items() if f["status"] != "migrate"} == {
        "checkpoints/put_checkpoints_here": "placeholder", "loras/put_loras_here": "placeholder",
        "loras/half_downloaded.safetensors.part": "incomplete", "vae/broken_empty.safetensors": "empty",
        "upscale_models/4x_foolhardy_Remacri.pth": "symlink"}
    assert files["upscale_models/4x_foolhardy_Remacri.pth"]["link_target"] == \
        "../loras/WanAnimate_relight_lora_fp16.safetensors"


def test_scan_reports_fifo_socket_bad_name_and_stray_file(tmp_path, cli_env):
    import socket
    src = tmp_path / "src"
    put(src / "loras/ok.safetensors", b"ok")
    put(src / "stray.safetensors", b"x")
    os.mkfifo(src / "loras/pipe.safetensors")
    with open(os.fsencode(src / "loras") + b"/caf\xe9.safetensors", "wb") as f:
        f.write(b"bad name")
    sock = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(src / "loras")
    try:
        sock.bind("sock")
    finally:
        os.chdir(cwd)
    try:
        doc = json.loads(run_cli(["scan", "--source", src, "--format", "json"], cli_env).stdout)
        table = run_cli(["scan", "--source", src], cli_env).stdout
    finally:
        sock.close()
    statuses = {f["path"]: f["status"] for f in doc["roots"][0]["files"]}
    assert statuses == {"stray.safetensors": "uncategorised", "loras/caf\udce9.safetensors": "bad-name",
                        "loras/ok.safetensors": "migrate", "loras/pipe.safetensors": "special",
                        "loras/sock": "special"}
    assert "not migrated: loras/caf\\udce9.safetensors: name is not valid UTF-8" in table


def test_second_scan_takes_digests_from_the_cache_and_rereads_a_rewrite_with_times_kept(pod, cli_env):
    victim = pod.models / "loras/lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors"
    old = xxhash.xxh3_128(victim.read_bytes()).hexdigest()
    args = ["scan", "--source", pod.models, "--format", "json"]
    past_racy_window()
    first = run_cli(["-v", *args], cli_env)
    assert re.search(r"hashed 17 files .*, 0 from the cache", first.stderr)
    assert os.path.isfile(cli_env["COMFY_MIGRATE_CACHE"])
    untouched = run_cli(["-v", *args], cli_env)
    assert re.search(r"hashed 0 files \(0 B\), 17 from the cache", untouched.stderr)

    st = victim.stat()
    with open(victim, "r+b") as f:       # same size, same inode; mtime put back below (as cp -p does)
        f.seek(st.st_size // 2)
        f.write(b"\0" * 4096)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert victim.stat().st_ino == st.st_ino and victim.stat().st_mtime_ns == st.st_mtime_ns
    new = xxhash.xxh3_128(victim.read_bytes()).hexdigest()
    assert new != old

    def digest(proc):
        return {f["path"]: f["digest"] for f in json.loads(proc.stdout)["roots"][0]["files"]}[
            str(victim.relative_to(pod.models))]

    second = run_cli(["-v", *args], cli_env)      # its ctime moved: the cached digest is not used
    assert re.search(r"hashed 1 files \(.*\), 16 from the cache", second.stderr), second.stderr
    assert digest(second) == new
    assert digest(untouched) == old


def test_scan_missing_source_is_one_line_exit_3(tmp_path, cli_env):
    proc = run_cli(["scan", "--source", tmp_path / "nope"], cli_env, check=ExitCode.BAD_INPUT)
    assert proc.stderr.count("\n") == 1 and "nope" in proc.stderr and proc.stdout == ""


def test_no_comfyui_found_is_one_line_exit_3(tmp_path, cli_env):
    if Path("/workspace/runpod-slim/ComfyUI").is_dir() or Path("/workspace/ComfyUI").is_dir():
        pytest.skip("this machine has a real ComfyUI at a default place (never touched by tests)")
    proc = run_cli(["scan"], cli_env, check=ExitCode.BAD_INPUT)
    assert proc.stderr.count("\n") == 1 and "no ComfyUI folder found" in proc.stderr


# --- plan: outcomes on the demo pod ------------------------------------------------------------------

def test_plan_on_the_pod_gives_each_outcome(pod, cli_env):
    doc = plan_json(pod, cli_env)
    acts = actions_by_source(doc, pod.models)
    t = str(pod.target)

    def brief(rel):
        a = acts[rel]
        dst = a["destination"][len(t) + 1:] if a["destination"] else None
        return a["action"], dst, a["method"], a["source_after"]

    assert brief("loras/lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors") == (
        "move", "loras/lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors", "hardlink", "unlink")
    assert brief("unet/Wan2_2-Animate-14B_fp8_e4m3fn_scaled_KJ.safetensors") == (
        "move", "diffusion_models/Wan2_2-Animate-14B_fp8_e4m3fn_scaled_KJ.safetensors", "hardlink", "unlink")
    assert brief("vae/wan_2.1_vae.safetensors") == (
        "already-there", "vae/wan_2.1_vae.safetensors", "none", "quarantine")
    assert brief("clip/umt5_xxl_fp8_e4m3fn_scaled.safetensors") == (
        "same-content", "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors", "hardlink", "quarantine")
    assert acts["clip/umt5_xxl_fp8_e4m3fn_scaled.safetensors"]["stored"] == \
        f"{t}/text_encoders/umt5_xxl_fp8_e4m3fn_scaled_copy.safetensors"
    assert brief("loras/WanAnimate_relight_lora_fp16.safetensors") == (
        "conflict", "loras/WanAnimate_relight_lora_fp16.safetensors", "none", "none")
    assert acts["insightface/inswapper_128.onnx"]["link_back"] is True
    skips = {rel: a["reason"] for rel, a in acts.items() if a["action"] == "skip"}
    assert skips == {
        "checkpoints/put_checkpoints_here": "ComfyUI placeholder", "loras/put_loras_here": "ComfyUI placeholder",
        "loras/half_downloaded.safetensors.part": "incomplete download",
        "vae/broken_empty.safetensors": "empty file",
        "upscale_models/4x_foolhardy_Remacri.pth":
            "symlink to ../loras/WanAnimate_relight_lora_fp16.safetensors (left as it is)"}
    assert doc["totals"]["by_action"] == {
        "already-there": {"files": 1, "bytes": 160 * 1024}, "conflict": {"files": 1, "bytes": 128 * 1024},
        "move": {"files": 13, "bytes": doc["totals"]["by_action"]["move"]["bytes"]},
        "same-content": {"files": 2, "bytes": (192 + 1024) * 1024}, "skip": {"files": 5, "bytes": 64 * 1024 + 49}}
    assert doc["totals"]["dedup_saves_bytes"] == (160 + 192 + 1024) * 1024
    assert doc["totals"]["copy_bytes"] == 0
    assert any("conflict:" in w for w in doc["warnings"])


def test_plan_on_conflict_rename_keeps_both(pod, cli_env):
    doc = plan_json(pod, cli_env, "--on-conflict", "rename")
    a = actions_by_source(doc, pod.models)["loras/WanAnimate_relight_lora_fp16.safetensors"]
    assert (a["action"], a["destination"], a["method"]) == (
        "move", f"{pod.target}/loras/WanAnimate_relight_lora_fp16.conflict-1.safetensors", "hardlink")
    assert "renamed to WanAnimate_relight_lora_fp16.conflict-1.safetensors" in a["reason"]
    assert doc["on_conflict"] == "rename"


def test_plan_legacy_unet_wins_on_a_real_tree(tmp_path, cli_env):
    src = tmp_path / "models"
    put(src / "unet/x.safetensors", make_pod.safetensors_bytes(2048, "loaded by ComfyUI today"))
    put(src / "diffusion_models/x.safetensors", make_pod.safetensors_bytes(2048, "shadowed by unet/x"))
    proc = run_cli(["plan", "--source", src, "--target", tmp_path / "store", "--format", "json"], cli_env)
    acts = actions_by_source(json.loads(proc.stdout), src)
    assert (acts["unet/x.safetensors"]["action"], acts["unet/x.safetensors"]["destination"]) == (
        "move", f"{tmp_path}/store/diffusion_models/x.safetensors")
    assert acts["diffusion_models/x.safetensors"]["action"] == "conflict"


def test_plan_table_shows_actions_totals_and_the_yaml_diff(pod, cli_env):
    before = pod.yaml.read_bytes()
    out = run_cli(["plan", *pod.args()], cli_env).stdout
    assert f"source: {pod.models}\nstore:  {pod.target}   (mode move)\n" in out
    for word in ("move ", "there ", "dedupe ", "CONFLICT ", "skipped: "):      # the table, skips counted
        assert word in out
    for word in ("already-there", "same-content", "conflict", "skip "):         # the totals
        assert word in out
    assert "deduplication saves 1.3 MiB; 0 B must be copied" in out
    assert re.search(r"target free space .*: the plan fits", out)
    assert f"{str(pod.models)[-24:]} -> target: hardlink" in out      # the source's end (shortened in the middle)
    assert "extra_model_paths.yaml change:" in out
    assert re.search(r"^--- /.*extra_model_paths\.yaml\n\+\+\+ /.*extra_model_paths\.yaml\n", out, re.M)  # over 120: in the middle
    assert f"--- {pod.yaml}\n+++ {pod.yaml}\n" in run_cli(["plan", "-v", *pod.args()], cli_env).stdout
    assert "+comfy_migrate:\n" in out and f"+  base_path: {pod.target}\n" in out
    assert "+  insightface: insightface\n" in out
    assert pod.yaml.read_bytes() == before


def test_plan_yaml_diff_from_nothing_when_the_file_does_not_exist(pod, cli_env):
    pod.yaml.unlink()
    doc = plan_json(pod, cli_env)
    assert doc["yaml"]["changes"] is True
    assert doc["yaml"]["diff"].startswith(f"--- /dev/null\n+++ {pod.yaml}\n")
    assert not pod.yaml.exists()


def test_plan_json_is_byte_identical_across_runs_and_versioned(pod, cli_env):
    first = run_cli(["plan", *pod.args("--format", "json")], cli_env).stdout
    second = run_cli(["plan", *pod.args("--format", "json")], cli_env).stdout      # now from the cache
    third = run_cli(["plan", *pod.args("--format", "json", "--no-cache")], cli_env).stdout
    assert first == second == third
    doc = json.loads(first)
    assert doc["version"] == 1
    assert list(doc) == sorted(doc)
    assert {"target", "sources", "mode", "actions", "totals", "yaml", "warnings", "probes"} <= set(doc)


def test_plan_changes_nothing_on_disk(pod, cli_env, tmp_path):
    put(pod.target / "unet/old.safetensors", b"already in the store under a legacy folder")
    os.symlink("vae/wan_2.1_vae.safetensors", pod.target / "link.safetensors")
    before = snapshot_tree(pod.root)
    parent_before = snapshot_tree(tmp_path)["pod"]
    for extra in ([], ["--format", "json"], ["--mode", "copy"], ["--mode", "link"], ["--on-conflict", "rename"],
                  ["--target", str(pod.root / "new-store")]):
        run_cli(["plan", *pod.args(*extra)], cli_env)
    run_cli(["scan", "--comfyui", pod.comfyui], cli_env)
    assert snapshot_tree(pod.root) == before
    assert snapshot_tree(tmp_path)["pod"] == parent_before
    assert not (pod.root / "new-store").exists()


# --- plan: across filesystems ------------------------------------------------------------------------

def test_link_mode_across_filesystems_is_refused(pod, cli_env, other_fs):
    before = snapshot_tree(other_fs)
    proc = run_cli(["plan", "--comfyui", pod.comfyui, "--target", other_fs / "store", "--mode", "link"],
                   cli_env, check=ExitCode.BAD_INPUT)
    assert proc.stderr.count("\n") == 1
    assert "--mode link" in proc.stderr and "EXDEV" in proc.stderr and "--mode move or --mode copy" in proc.stderr
    assert proc.stdout == ""
    assert snapshot_tree(other_fs) == before


def test_move_across_filesystems_is_planned_as_copy_verify(pod, cli_env, other_fs):
    store = other_fs / "store"
    before = snapshot_tree(other_fs)
    doc = json.loads(run_cli(["plan", "--comfyui", pod.comfyui, "--target", store, "--format", "json"],
                             cli_env).stdout)
    moves = [a for a in doc["actions"] if a["action"] == "move"]
    assert len(moves) == 15
    assert {(a["method"], a["source_after"]) for a in moves} == {("copy", "quarantine")}
    assert doc["totals"]["copy_bytes"] == sum(a["size"] for a in moves)
    (probe,) = doc["probes"]
    assert (probe["hardlink"], probe["rename"]) == (False, False) and "EXDEV" in probe["detail"]
    out = run_cli(["plan", "--comfyui", pod.comfyui, "--target", store], cli_env).stdout
    assert "/models -> target: copy + verify" in out            # the source's end (shortened in the middle)
    assert snapshot_tree(other_fs) == before


# --- bad input: one line, exit 3, nothing changed ----------------------------------------------------

def _one_error_line(proc):
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("comfy-migrate: error: ")
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.parametrize("text, words", [
    ("other_ui:\n  base_path: [\n", "malformed YAML"),
    ("other_ui:\n  checkpoints:\n    - models/a\n    - models/b\n", "is a list"),
])
def test_plan_refuses_a_bad_yaml(pod, cli_env, text, words):
    pod.yaml.write_text(text)
    before = snapshot_tree(pod.root)
    proc = run_cli(["plan", *pod.args()], cli_env, check=ExitCode.BAD_INPUT)
    line = _one_error_line(proc)
    assert words in line and str(pod.yaml) in line
    assert snapshot_tree(pod.root) == before


def test_plan_refuses_a_bad_yaml_even_with_nothing_to_move(tmp_path, cli_env):
    (tmp_path / "models").mkdir()
    y = tmp_path / "extra_model_paths.yaml"
    y.write_text("a: [\n")
    (tmp_path / "main.py").write_text("")          # --yaml names a file ComfyUI reads (issue 23)
    proc = run_cli(["plan", "--source", tmp_path / "models", "--target", tmp_path / "t", "--yaml", y], cli_env,
                   check=ExitCode.BAD_INPUT)
    assert "malformed YAML" in _one_error_line(proc)


def test_plan_custom_folder_named_like_a_number_gives_a_valid_yaml(tmp_path, cli_env):
    put(tmp_path / "models/2024/m.bin", b"custom node model")
    (tmp_path / "main.py").write_text("")          # --yaml names a file ComfyUI reads (issue 23)
    doc = json.loads(run_cli(["plan", "--source", tmp_path / "models", "--target", tmp_path / "t",
                              "--yaml", tmp_path / "extra_model_paths.yaml", "--format", "json"], cli_env).stdout)
    assert "+  '2024': '2024'\n" in doc["yaml"]["diff"]


@pytest.mark.parametrize("where", ["target_in_source", "source_in_target", "same"])
def test_plan_refuses_overlapping_trees(pod, cli_env, where):
    target = {"target_in_source": pod.models / "store", "source_in_target": pod.comfyui,
              "same": pod.models}[where]
    before = snapshot_tree(pod.root)
    proc = run_cli(["plan", "--comfyui", pod.comfyui, "--target", target], cli_env, check=ExitCode.BAD_INPUT)
    line = _one_error_line(proc)
    assert ("same folder" if where == "same" else "inside the") in line
    assert snapshot_tree(pod.root) == before


@pytest.mark.parametrize("command, spellings", [
    ("plan", ["models", "models"]),
    ("plan", ["models", "./models/", "alias", "models"]),
    ("run", ["models", "./models/", "alias", "models"]),
    ("scan", ["models", "./models/", "alias", "models"]),     # it would list the tree once per spelling
])
def test_the_same_models_tree_given_twice_is_named_once_with_its_spellings(tmp_path, cli_env, command, spellings):
    # It once said "sources overlap: X and X", as if two trees met.
    put(tmp_path / "models/loras/a.safetensors", b"a lora" * 100)
    os.symlink(tmp_path / "models", tmp_path / "alias")
    args = [a for s in spellings for a in ("--source", s)]
    args += [] if command == "scan" else ["--target", tmp_path / "t", *(["--yes"] if command == "run" else [])]
    before = snapshot_tree(tmp_path / "models")
    proc = run_cli([command, *args], cli_env, cwd=tmp_path, check=ExitCode.BAD_INPUT)
    real = os.path.realpath(tmp_path / "models")
    times = "twice" if len(spellings) == 2 else f"{len(spellings)} times"
    assert _one_error_line(proc) == (f"comfy-migrate: error: the same folder {real} is given {times} as --source: "
                                     f"{', '.join(spellings)} (give each models tree once)")
    assert snapshot_tree(tmp_path / "models") == before and not (tmp_path / "t").exists()


def test_plan_names_both_trees_when_one_source_is_inside_another(tmp_path, cli_env):
    put(tmp_path / "models/loras/a.safetensors", b"a lora" * 100)
    proc = run_cli(["plan", "--source", "models/loras", "--source", "models", "--source-is-models",
                    "--target", tmp_path / "t"], cli_env, cwd=tmp_path, check=ExitCode.BAD_INPUT)
    outer = os.path.realpath(tmp_path / "models")
    inner = os.path.join(outer, "loras")
    assert _one_error_line(proc) == (
        f"comfy-migrate: error: sources overlap: {inner} is inside {outer}, so its files would be migrated twice "
        f"(give each models tree once: pass --source {outer} alone (it holds {inner}))")


def test_plan_refuses_a_target_inside_the_source_through_a_symlink(pod, cli_env, tmp_path):
    os.symlink(pod.models, tmp_path / "alias")
    proc = run_cli(["plan", "--comfyui", pod.comfyui, "--target", tmp_path / "alias" / "store"], cli_env,
                   check=ExitCode.BAD_INPUT)
    assert "inside the source" in _one_error_line(proc)


@pytest.mark.parametrize("args", [
    ["--source", "{tmp}/missing"],
    ["--comfyui", "{tmp}/missing"],
    ["--comfyui", "{tmp}/comfy-without-models"],
])
def test_plan_refuses_a_missing_folder(tmp_path, cli_env, args):
    (tmp_path / "comfy-without-models").mkdir()
    args = [a.format(tmp=tmp_path) for a in args]
    proc = run_cli(["plan", *args, "--target", tmp_path / "t"], cli_env, check=ExitCode.BAD_INPUT)
    line = _one_error_line(proc)
    assert str(tmp_path) in line
    assert not (tmp_path / "t").exists()


def test_a_relative_cache_path_is_saved_and_used(pod, cli_env, tmp_path):
    # COMFY_MIGRATE_CACHE=digests.sqlite (no folder part): it is taken relative to the working
    # directory, and the digests are saved there (they once never were).
    work = tmp_path / "work"
    work.mkdir()
    env = dict(cli_env, COMFY_MIGRATE_CACHE="digests.sqlite")
    args = ["-v", "scan", "--source", pod.models, "--format", "json"]
    past_racy_window()
    assert re.search(r"hashed 17 files .*, 0 from the cache", run_cli(args, env, cwd=work).stderr)
    assert (work / "digests.sqlite").is_file()
    assert re.search(r"hashed 0 files \(0 B\), 17 from the cache", run_cli(args, env, cwd=work).stderr)


def test_scan_table_counts_hardlinks_as_one_file_not_a_duplicate(tmp_path, cli_env):
    loras = tmp_path / "models" / "loras"
    loras.mkdir(parents=True)
    data = os.urandom(5000)
    (loras / "a.safetensors").write_bytes(data)
    os.link(loras / "a.safetensors", loras / "b.safetensors")          # one file, two names
    (loras / "c.safetensors").write_bytes(data)                        # a real second copy
    row = next(line.split() for line in run_cli(["scan", "--source", tmp_path / "models"], cli_env).stdout.splitlines()
               if line.startswith("loras"))
    assert row == ["loras", "3", "9.8", "KiB", "1", "0"]               # 2 inodes of 4.9 KiB, 1 duplicate
    dup = run_cli(["scan", "--source", tmp_path / "models", "--duplicates"], cli_env).stdout
    assert "1 groups of identical content" in dup or "1 group" in dup


def test_verbosity_options_work_after_the_command_too(pod, cli_env):
    # The target's free space is a reading of a disk others write to (the first plan writes the digest
    # cache; other tests, other processes): to the tenth of a GiB it may differ between two plans.
    def steady(out: str) -> str:
        return re.sub(r"target free space [^:]+:", "target free space N:", out)
    before = run_cli(["-v", "plan", *pod.args()], cli_env).stdout
    after = run_cli(["plan", *pod.args(), "-v"], cli_env).stdout
    assert "target free space " in after
    assert steady(before) == steady(after) and "put_loras_here" in after                 # -v lists every file, skips included
    quiet = run_cli(["plan", "-q", *pod.args()], cli_env)
    assert quiet.returncode == 0 and "put_loras_here" not in quiet.stdout
