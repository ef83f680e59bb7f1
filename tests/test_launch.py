"""Issue 23: ComfyUI as it is launched. `--comfyui` names the folder of main.py; ComfyUI's own options
(`--base-directory`, `--models-directory`, `--extra-model-paths-config`, the output folders main.py
adds) come from --comfyui-args, its variable, or a running server's command line, and plan, run,
verify and rollback resolve names as ComfyUI started so does. Every name is judged by ComfyUI's own
code (tests/comfyui_oracle.py: folder_paths.py, utils/extra_config.py, cli_args.py and main.py's
apply_custom_paths) of both 0.3.75 and 0.33.0, before the run, after it and after the rollback.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comfyui_oracle import VERSIONS, comfyui_loads, oracle_dir
from conftest import as_model, run_cli, snapshot_tree
from migrate.disk.running import find_running, script_index

STATE = ".comfy-migrate"


def put(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(as_model(path.name, payload))


class LaunchPod:
    """ComfyUI's code folder (main.py, the version's folder_paths.py and cli_args.py: the tool reads
    its categories and its options from them) and, elsewhere, its data: the base folder B with
    B/models, a models folder D of its own, an extra YAML and its folder, and a store that another
    pod filled (it holds names of this pod's with other bytes)."""

    def __init__(self, base: Path, version: str) -> None:
        self.root = base
        self.version = version
        self.comfyui = base / "ComfyUI"
        oracle = oracle_dir(version)
        for rel in ("main.py", "folder_paths.py", "comfyui_version.py", "comfy/cli_args.py", "comfy/options.py"):
            (self.comfyui / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(oracle / rel, self.comfyui / rel)
        self.store = base / "store"
        self.data = base / "data"               # --base-directory
        self.extra = base / "extra"             # an --extra-model-paths-config's folders
        put(self.store / "loras/from_extra.safetensors", b"s" * 70)     # another pod's file of that name
        put(self.store / "loras/from_output.safetensors", b"t" * 71)
        put(self.extra / "loras/from_extra.safetensors", b"E" * 70)
        put(self.extra / "vae/extra_only.safetensors", b"F" * 60)
        self.config = self.comfyui / "more_paths.yaml"
        self.config.write_text(f"elsewhere:\n  base_path: {self.extra}\n  loras: loras\n  vae: vae\n")

    def fill(self, models: Path) -> None:
        put(models / "checkpoints/sd15.safetensors", b"A" * 300)
        put(models / "loras/style/ink.safetensors", b"L" * 100)
        put(models / "vae/pod_vae.safetensors", b"W" * 80)
        put(models / "unet/flux.safetensors", b"U" * 90)
        put(models / "clip/clip_l.safetensors", b"C" * 50)

    def args(self, *extra: str) -> list:
        return ["--comfyui", str(self.comfyui), "--target", str(self.store), *extra]

    def snap(self) -> dict:
        out = {}
        for rel, (kind, mode, mtime, ino, nlink, content) in snapshot_tree(self.root).items():
            if rel.startswith("store/" + STATE) or rel in ("", "store", "state") or rel.startswith("state/"):
                continue
            if rel.endswith("__pycache__") or "/__pycache__/" in rel:
                continue
            keep = kind != "symlink" and not rel.endswith(".yaml")      # a YAML is rewritten atomically
            out[rel] = (kind, mode, mtime if kind != "dir" else None, ino if keep else None, content)
        return out


@pytest.fixture(params=VERSIONS)
def version(request) -> str:
    return request.param


def round_trip(pod: LaunchPod, env, launch: list, expect_declared: set, source: Path, shown=None) -> dict:
    """plan, run, verify, rollback with ComfyUI started with `launch`: after the run ComfyUI loads for
    every name what it loaded before but for exactly the names the plan declares (`expect_declared`),
    and after the rollback exactly what it loaded before, every byte of the pod as it was."""
    before = comfyui_loads(pod.comfyui, launch, pod.version)
    snap = pod.snap()
    cli_launch = ["--comfyui-args", " ".join(launch)] if launch else []
    doc = json.loads(run_cli(["plan", *pod.args("--format", "json", *cli_launch)], env).stdout)
    declared = {(c["category"], c["name"]) for c in doc["name_changes"]}
    assert declared == expect_declared
    assert doc["sources"] == [str(source)]
    assert doc["comfyui"]["args"] == (shown if shown is not None else [
        os.path.normpath(os.path.join(pod.comfyui, a)) if a.endswith(".yaml") else a for a in launch])
    run = run_cli(["run", *pod.args("--yes", "--format", "json", *cli_launch)], env, check=None)
    rdoc = json.loads(run.stdout)
    assert rdoc["yaml_written"]
    assert run.returncode == (1 if rdoc["stayed"] else 0) and all(s["why"] == "conflict" for s in rdoc["stayed"])
    assert (pod.comfyui / "extra_model_paths.yaml").is_file()       # next to main.py, whatever B is
    assert not (pod.data / "extra_model_paths.yaml").exists()
    after = comfyui_loads(pod.comfyui, launch, pod.version)
    moved = 0
    for key, (digest, path) in before.items():
        got = after.get(key, (None, "nothing"))
        if key in declared:
            assert got[0] != digest, key
        else:
            assert got[0] == digest, (key, path, got)
            moved += got[1].startswith(str(pod.store) + "/")
    assert moved >= 5, (before, after)          # the pod's models load from the store now
    # verify needs no options: the run logged them (no ComfyUI runs now)
    v = run_cli(["verify", *pod.args("--format", "json")], env, check=None)
    vdoc = json.loads(v.stdout)
    assert v.returncode == 0 and vdoc["ok"], vdoc
    assert vdoc["launch"]["args"] == doc["comfyui"]["args"]
    run_cli(["rollback", *pod.args("--yes")], env)
    assert comfyui_loads(pod.comfyui, launch, pod.version) == before
    assert pod.snap() == snap
    return doc


def test_base_directory(tmp_path, cli_env, version):
    """`--base-directory B`: models in B/models, the YAML ComfyUI reads is the one next to main.py (a
    run once wrote B/extra_model_paths.yaml, which ComfyUI never reads: 54 of 68 names were gone)."""
    pod = LaunchPod(tmp_path, version)
    pod.fill(pod.data / "models")
    pod.fill(pod.comfyui / "models")            # ComfyUI's own folder holds models too: not searched
    put(pod.comfyui / "models/loras/style/ink.safetensors", b"l" * 100)
    round_trip(pod, cli_env, ["--base-directory", str(pod.data)], set(), pod.data / "models")


def test_extra_model_paths_config(tmp_path, cli_env, version):
    """`--extra-model-paths-config more_paths.yaml` (relative: from ComfyUI's folder, as it is started
    there), read after the YAML next to main.py: the name only its folder served loads the store's
    other file after the run, and the plan says so (it switched undeclared)."""
    pod = LaunchPod(tmp_path, version)
    pod.fill(pod.comfyui / "models")
    round_trip(pod, cli_env, ["--extra-model-paths-config", "more_paths.yaml"],
               {("loras", "from_extra.safetensors")}, pod.comfyui / "models")


def test_extra_configs_in_order_with_the_base_directory(tmp_path, cli_env, version):
    """Several files for one option and the option twice, each read in order; with --base-directory."""
    pod = LaunchPod(tmp_path, version)
    pod.fill(pod.data / "models")
    second = pod.root / "second.yaml"
    put(pod.root / "second/loras/from_extra.safetensors", b"2" * 70)      # read later: wins nothing (plain)
    put(pod.root / "first/vae/extra_only.safetensors", b"1" * 60)         # is_default: wins over `more`
    first = pod.root / "first.yaml"
    first.write_text(f"first:\n  base_path: {pod.root / 'first'}\n  is_default: true\n  vae: vae\n")
    second.write_text(f"second:\n  base_path: {pod.root / 'second'}\n  loras: loras\n")
    launch = ["--base-directory", str(pod.data), "--extra-model-paths-config", str(pod.config), str(first),
              "--extra-model-paths-config", str(second)]
    before = comfyui_loads(pod.comfyui, launch, version)
    assert before[("vae", "extra_only.safetensors")][1] == str(pod.root / "first/vae/extra_only.safetensors")
    shown = [*launch[:2], "--extra-model-paths-config", str(pod.config), str(first), str(second)]
    round_trip(pod, cli_env, launch, {("loras", "from_extra.safetensors")}, pod.data / "models", shown)


def test_output_folders_are_searched(tmp_path, cli_env, version):
    """ComfyUI searches <output>/{checkpoints,loras,vae,clip,diffusion_models} after the YAML's
    folders: a name only output/ holds switched to the store's file undeclared."""
    pod = LaunchPod(tmp_path, version)
    pod.fill(pod.comfyui / "models")
    put(pod.comfyui / "output/loras/from_output.safetensors", b"O" * 71)
    put(pod.comfyui / "output/clip/out_clip.safetensors", b"o" * 40)
    round_trip(pod, cli_env, [], {("loras", "from_output.safetensors")}, pod.comfyui / "models")


def test_output_directory_option(tmp_path, cli_env, version):
    pod = LaunchPod(tmp_path, version)
    pod.fill(pod.data / "models")
    put(pod.root / "out/loras/from_output.safetensors", b"O" * 71)
    round_trip(pod, cli_env, ["--base-directory", str(pod.data), "--output-directory", str(pod.root / "out")],
               {("loras", "from_output.safetensors")}, pod.data / "models")


def test_models_directory(tmp_path, cli_env, version):
    """`--models-directory D` (new in 0.33): D is migrated, not <ComfyUI>/models (which ComfyUI does not
    search then); the plan's name changes are those ComfyUI's code sees. 0.3.75 does not know the
    option: it would not start, so the tool refuses it as a usage error (exit 2)."""
    pod = LaunchPod(tmp_path, version)
    d = pod.root / "mymodels"
    pod.fill(d)
    pod.fill(pod.comfyui / "models")
    put(d / "loras/from_extra.safetensors", b"d" * 70)      # the store holds another from_extra
    launch = ["--models-directory", str(d)]
    if version == "0.3.75":
        r = run_cli(["plan", *pod.args("--comfyui-args", " ".join(launch))], cli_env, check=2)
        assert "unrecognized arguments: --models-directory" in r.stderr and "0.3.75" in r.stderr
        return
    round_trip(pod, cli_env, launch, {("loras", "from_extra.safetensors")}, d)


def test_the_variable_gives_the_options(tmp_path, cli_env):
    pod = LaunchPod(tmp_path, "0.3.75")
    pod.fill(pod.data / "models")
    env = dict(cli_env, COMFY_MIGRATE_COMFYUI_ARGS=f"--base-dir {pod.data}")      # an abbreviation, as argparse takes it
    doc = json.loads(run_cli(["plan", *pod.args("--format", "json")], env).stdout)
    assert doc["comfyui"]["args"] == ["--base-directory", str(pod.data)]
    assert doc["comfyui"]["from"] == "$COMFY_MIGRATE_COMFYUI_ARGS"
    assert doc["sources"] == [str(pod.data / "models")]
    table = run_cli(["plan", *pod.args()], env).stdout
    line = f"ComfyUI: {pod.comfyui} started with --base-directory {pod.data} ($COMFY_MIGRATE_COMFYUI_ARGS)"
    assert line in table
    assert line in run_cli(["run", *pod.args("--yes")], env).stdout.splitlines()


@pytest.mark.parametrize("args, code, words", [
    (["--no-such-option"], 2, "unrecognized arguments: --no-such-option"),
    (["--base-directory"], 2, "expected one argument"),
    (["--extra-model-paths-config", "missing.yaml"], 3, "is not a file: ComfyUI would not start"),
    (["--base-directory '/a b"], 2, "No closing quotation"),
])
def test_options_comfyui_would_refuse(tmp_path, cli_env, args, code, words):
    pod = LaunchPod(tmp_path, "0.33.0")
    pod.fill(pod.comfyui / "models")
    r = run_cli(["plan", *pod.args("--comfyui-args", " ".join(args))], cli_env, check=code)
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_malformed_extra_config_is_refused(tmp_path, cli_env):
    pod = LaunchPod(tmp_path, "0.33.0")
    pod.fill(pod.comfyui / "models")
    pod.config.write_text("a: [\n")
    r = run_cli(["plan", *pod.args("--comfyui-args", "--extra-model-paths-config more_paths.yaml")], cli_env, check=3)
    assert "more_paths.yaml: malformed YAML" in r.stderr


# --- a running ComfyUI: its options from /proc, the guard -------------------------------------------

@pytest.mark.parametrize("argv, index", [
    (["python3", "main.py"], 1),
    (["python3", "-X", "utf8", "-u", "main.py"], 4),
    (["python3", "-W", "ignore", "main.py", "--port", "1"], 3),
    (["/venv/bin/python3.12", "-Xutf8", "-uB", "-Wignore", "main.py"], 4),
    (["python", "-uW", "ignore", "/x/main.py"], 3),
    (["python3", "--check-hash-based-pycs", "never", "-I", "main.py"], 4),
    (["python3", "-m", "main"], None),
    (["python3", "-c", "import main"], None),
    (["uv", "run", "main.py"], 2),
])
def test_python_options_before_the_script(argv, index):
    assert script_index(argv) == index


@pytest.fixture
def start(tmp_path):
    procs = []

    def go(pod: LaunchPod, *py_and_comfy: str) -> subprocess.Popen:
        (pod.comfyui / "main.py").write_text("import time\ntime.sleep(120)\n")    # a server stand-in
        p = subprocess.Popen([sys.executable, *py_and_comfy], cwd=pod.comfyui)
        procs.append(p)
        deadline = time.monotonic() + 10
        while p.pid not in {r.pid for r in find_running(str(pod.comfyui))} and time.monotonic() < deadline:
            time.sleep(0.05)
        return p

    yield go
    for p in procs:
        p.kill()
        p.wait()


@pytest.mark.parametrize("py", [["-X", "utf8", "-u"], ["-W", "ignore"], ["-I", "-X", "dev"]])
def test_the_guard_sees_interpreter_options_and_prints_the_options_to_pass(tmp_path, cli_env, start, py):
    """`python3 -X utf8 -u main.py` (and -W ignore, ...) is a running ComfyUI: run refuses, in one line
    that gives the options to pass once it is stopped (then /proc no longer has them)."""
    pod = LaunchPod(tmp_path, "0.33.0")
    pod.fill(pod.data / "models")
    p = start(pod, *py, "main.py", "--port", "8199", "--base-directory", "../data", "--cpu")
    r = run_cli(["run", *pod.args("--yes")], cli_env, check=3)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"pid {p.pid}, port 8199" in r.stderr
    assert f"once it is stopped, pass its options: comfy-migrate run --comfyui {pod.comfyui} --comfyui-args " \
           f"'--base-directory {pod.data}'" in r.stderr
    doc = json.loads(run_cli(["plan", *pod.args("--format", "json")], cli_env).stdout)
    assert doc["comfyui"]["args"] == ["--base-directory", str(pod.data)]        # relative: from its working folder
    assert doc["comfyui"]["from"] == f"read from the running ComfyUI, pid {p.pid}"
    assert doc["sources"] == [str(pod.data / "models")]


def test_the_base_folder_of_a_running_comfyui_is_not_its_folder(tmp_path, cli_env, start):
    """`run --comfyui B` while ComfyUI runs from elsewhere with --base-directory B: refused (exit 3),
    naming the folder of its main.py (it once wrote B/extra_model_paths.yaml and missed the server)."""
    pod = LaunchPod(tmp_path, "0.33.0")
    pod.fill(pod.data / "models")
    start(pod, "main.py", "--base-directory", str(pod.data))
    for cmd in ("plan", "run"):
        r = run_cli([cmd, "--comfyui", str(pod.data), "--target", str(pod.store), "--yes"][:None if cmd == "run" else -1],
                    cli_env, check=3)
        assert f"pass --comfyui {pod.comfyui}" in r.stderr and "reads" in r.stderr, r.stderr
    assert not (pod.data / "extra_model_paths.yaml").exists()
    assert not (pod.store / STATE).exists()


def test_given_options_win_over_the_running_ones_with_a_warning(tmp_path, cli_env, start):
    pod = LaunchPod(tmp_path, "0.33.0")
    pod.fill(pod.data / "models")
    start(pod, "main.py", "--base-directory", str(pod.data))
    r = run_cli(["plan", *pod.args("--format", "json", "--comfyui-args", f"--base-directory {pod.data} "
                                   "--extra-model-paths-config more_paths.yaml")], cli_env)
    assert json.loads(r.stdout)["comfyui"]["from"] == "--comfyui-args"
    assert "was started with --base-directory" in r.stderr and "planned for --comfyui-args" in r.stderr


@pytest.mark.parametrize("launch, source, declared", [
    (["--extra-model-paths-config", "more_paths.yaml"], "ComfyUI/models", {("loras", "from_extra.safetensors")}),
    (["--models-directory", "../mymodels"], "mymodels", {("loras", "from_extra.safetensors")}),
    (["--base-directory", "../data"], "data/models", set()),
])
def test_the_running_servers_options_are_planned_with(tmp_path, cli_env, start, launch, source, declared):
    """No option given: those of the ComfyUI running from the folder (/proc) decide what is migrated
    and which names the plan declares, as ComfyUI's code (0.33.0) judges them."""
    pod = LaunchPod(tmp_path, "0.33.0")
    for m in ("ComfyUI/models", "mymodels", "data/models"):
        pod.fill(pod.root / m)
    put(pod.root / "mymodels/loras/from_extra.safetensors", b"d" * 70)
    before = comfyui_loads(pod.comfyui, launch, "0.33.0")
    start(pod, "-X", "utf8", "main.py", *launch)
    doc = json.loads(run_cli(["plan", *pod.args("--format", "json")], cli_env).stdout)
    assert {(c["category"], c["name"]) for c in doc["name_changes"]} == declared
    assert doc["sources"] == [str(pod.root / source)]
    store = {("loras", "from_extra.safetensors"): pod.store / "loras/from_extra.safetensors"}
    for key in declared:        # ComfyUI's own code: the name loads something else, the store's file, after it
        assert before[key][1] != str(store[key])


def test_audit_and_workflows_read_the_launchs_folders(tmp_path, cli_env):
    """With --base-directory B, ComfyUI's models are B/models and its saved workflows B/user/..."""
    pod = LaunchPod(tmp_path, "0.33.0")
    pod.fill(pod.data / "models")
    flow = pod.data / "user/default/workflows/w.json"
    flow.parent.mkdir(parents=True)
    flow.write_text(json.dumps({"nodes": [{"type": "CheckpointLoaderSimple", "widgets_values": ["sd15.safetensors"]}]}))
    launch = ["--comfyui-args", f"--base-directory {pod.data}"]
    doc = json.loads(run_cli(["audit", "--comfyui", str(pod.comfyui), "--target", str(pod.store), "--format", "json",
                              *launch], cli_env).stdout)
    assert str(pod.data / "models") in doc["roots"]
    doc = json.loads(run_cli(["workflows", "--comfyui", str(pod.comfyui), "--format", "json", *launch], cli_env).stdout)
    assert len(doc["workflows"]) == 1 and doc["workflows"][0]["path"] == str(flow)


def test_the_yaml_written_may_be_an_extra_config(tmp_path, cli_env, version):
    """`--yaml X` where ComfyUI is started with `--extra-model-paths-config X`: ComfyUI reads X, so the
    store's section may go there; names are judged with both YAMLs, X with its new text."""
    pod = LaunchPod(tmp_path, version)
    pod.fill(pod.comfyui / "models")
    main_yaml = pod.comfyui / "extra_model_paths.yaml"
    put(pod.root / "mine/vae/pod_vae.safetensors", b"m" * 80)       # the user's own is_default folder wins today
    main_yaml.write_text(f"mine:\n  base_path: {pod.root / 'mine'}\n  is_default: true\n  vae: vae\n")
    launch = ["--extra-model-paths-config", str(pod.config)]
    before = comfyui_loads(pod.comfyui, launch, version)
    assert before[("vae", "pod_vae.safetensors")][1].startswith(str(pod.root / "mine"))
    args = pod.args("--yaml", str(pod.config), "--comfyui-args", " ".join(launch))
    doc = json.loads(run_cli(["plan", *args, "--format", "json"], cli_env).stdout)
    declared = {(c["category"], c["name"]) for c in doc["name_changes"]}
    assert ("loras", "from_extra.safetensors") in declared
    snap = pod.snap()
    r = run_cli(["run", *args, "--yes", "--format", "json"], cli_env, check=None)
    assert r.returncode in (0, 1) and json.loads(r.stdout)["yaml_written"]
    assert "comfy_migrate" in pod.config.read_text() and "comfy_migrate" not in main_yaml.read_text()
    after = comfyui_loads(pod.comfyui, launch, version)
    for key, (digest, path) in before.items():
        assert (after.get(key, (None,))[0] == digest) is (key not in declared), (key, path, after.get(key))
    run_cli(["rollback", *pod.args("--yes")], cli_env)
    assert comfyui_loads(pod.comfyui, launch, version) == before and pod.snap() == snap


ARGVS = [
    ["--listen", "--base-directory", "B", "--cpu"],
    ["--listen=0.0.0.0", "--port", "8190", "--base-dir", "B", "--output-directory=O"],
    ["--extra-model-paths-config", "a.yaml", "b.yaml", "--preview-method", "auto", "--extra-model-paths-config", "c.yaml"],
    ["--extra-model-paths-config=a.yaml", "--verbose", "--base-directory", "B"],
    ["--cuda-device", "0", "--fast", "--extra-model-paths", "a.yaml", "--disable-auto-launch"],
    ["--user-directory", "{tmp}", "--enable-cors-header", "--output-directory", "O"],
]


@pytest.mark.parametrize("argv", ARGVS)
def test_options_parse_as_comfyuis_own_parser_parses_them(tmp_path, version, argv):
    """The installed ComfyUI's option list, read with ast, gives what its own cli_args.py gives."""
    from migrate.disk.launch import launch_of
    pod = LaunchPod(tmp_path, version)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    for name in ("a.yaml", "b.yaml", "c.yaml"):
        (pod.comfyui / name).write_text("x:\n  loras: l\n")
    code = ("import json, os, sys\nsys.path.insert(0, sys.argv[1])\nsys.argv = ['main.py'] + sys.argv[2:]\n"
            "import comfy.options\ncomfy.options.enable_args_parsing()\nfrom comfy.cli_args import args\n"
            "print(json.dumps([args.base_directory, args.output_directory, args.user_directory,"
            " args.extra_model_paths_config]))\n")
    theirs = json.loads(subprocess.run([sys.executable, "-c", code, str(oracle_dir(version)), *argv], cwd=pod.comfyui,
                                       capture_output=True, text=True, check=True).stdout)
    ours = launch_of(str(pod.comfyui), argv, "test")
    absolute = lambda p: os.path.normpath(os.path.join(pod.comfyui, p))      # noqa: E731
    assert (ours.base != os.path.realpath(pod.comfyui)) == bool(theirs[0])
    if theirs[0]:
        assert ours.base == absolute(theirs[0])
    assert ours.output == (absolute(theirs[1]) if theirs[1] else os.path.join(ours.base, "output"))
    assert ours.user == (absolute(theirs[2]) if theirs[2] else os.path.join(ours.base, "user"))
    assert list(ours.configs) == [absolute(c) for group in theirs[3] or [] for c in group]


def test_attach_sees_the_launch(tmp_path, cli_env, version):
    """attach on a ComfyUI started with --base-directory and --extra-model-paths-config: it declares
    the name the extra config served that the store now wins (as ComfyUI's code judges it), attaches,
    and every other name loads what it loaded before (the store's files first)."""
    pod = LaunchPod(tmp_path, version)
    pod.fill(pod.data / "models")
    launch = ["--base-directory", str(pod.data), "--extra-model-paths-config", str(pod.config)]
    args = ["--comfyui", str(pod.comfyui), "--target", str(pod.store), "--comfyui-args", " ".join(launch)]
    before = comfyui_loads(pod.comfyui, launch, version)
    doc = json.loads(run_cli(["attach", *args, "--dry-run", "--format", "json"], cli_env).stdout)
    declared = {(c["category"], c["name"]) for c in doc["name_changes"] + doc["not_compared"]}
    assert ("loras", "from_extra.safetensors") in declared
    run_cli(["attach", *args, "--yes"], cli_env, check=None)
    after = comfyui_loads(pod.comfyui, launch, version)
    for key, (digest, path) in before.items():
        if key not in declared:
            assert after.get(key, (None,))[0] == digest, (key, path, after.get(key))
    assert after[("loras", "from_extra.safetensors")][1] == str(pod.store / "loras/from_extra.safetensors")
    assert not (pod.data / "extra_model_paths.yaml").exists()
