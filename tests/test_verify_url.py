"""verify --comfyui-url against what a real ComfyUI 0.3.75 answered (fixtures/comfyui-0.3.75/,
recorded by scripts/real-comfyui), served by a small HTTP server on 127.0.0.1: both forms of loader
choices, /embeddings, vae_approx pairs, a server started before the YAML changed."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from conftest import run_cli
from migrate.views import report
from migrate.app.verify import check_listed, input_choices, parse_server

ROOT = Path(__file__).resolve().parent.parent
REC = ROOT / "fixtures" / "comfyui-0.3.75"
sys.path.insert(0, str(ROOT / "fixtures"))
import real_pod  # noqa: E402

RESTART = "ComfyUI was started before the YAML changed: restart it"


def recording(name: str, root: Path) -> dict:
    """A recording with the pod's folder of the real run replaced by this test's."""
    text = (REC / f"{name}.json").read_text().replace("{POD}", str(root))
    return json.loads(text)


class Served:
    """A tiny ComfyUI stand-in answering /object_info, /embeddings and /internal/folder_paths from a
    recording (a route whose value is None answers 404, as on a server without it)."""

    def __init__(self, rec: dict) -> None:
        routes = {"/object_info": rec["object_info"], "/embeddings": rec["embeddings"],
                  "/internal/folder_paths": rec["folder_paths"]}

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                body = routes.get(self.path)
                self.send_response(404 if body is None else 200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(body).encode())

            def log_message(self, *a):
                pass

        self.srv = HTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.srv.server_port}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def real_pod_migrated(tmp_path, cli_env):
    """The pod of the real check (same layout and names), migrated with `run`."""
    root = tmp_path / "real"
    comfyui = root / "workspace" / "runpod-slim" / "ComfyUI"
    real_pod.build(str(comfyui / "models"))
    target = root / "workspace" / "models"
    env = dict(cli_env, COMFYUI_DIR=str(comfyui), COMFY_MIGRATE_TARGET=str(target))
    run_cli(["run", "--yes"], env)
    return root, env


def verify(env, url, check):
    r = run_cli(["verify", "--format", "json", "--comfyui-url", url], env, check=check)
    return json.loads(r.stdout)


def test_after_a_restart_every_name_is_listed(real_pod_migrated):
    root, env = real_pod_migrated
    rec = recording("after", root)
    with Served(rec) as s:
        doc = verify(env, s.url, 0)
        table = run_cli(["verify", "--comfyui-url", s.url], env).stdout
    c = doc["comfyui"]
    assert doc["not_listed_by_comfyui"] == [] and c["stale"] is None
    assert rec["nodes"] == 534 and c["nodes"] == len(rec["object_info"])     # trimmed to the loaders
    assert c["checked"] == 27          # 32 names less 3 in no list, 2 shown by no name of their own
    # Files no list shows by their own name: a custom-node folder, classifiers, a lone vae_approx half.
    assert "ultralytics/bbox/face_yolov8m.safetensors" in c["unchecked"]
    assert "vae_approx/taesdxl_decoder.safetensors" not in c["not_listed"]
    assert "all good" in table and RESTART not in table


def test_a_server_started_before_the_run_says_restart(real_pod_migrated):
    """Recorded from the real server left running through `run --while-running`."""
    root, env = real_pod_migrated
    with Served(recording("stale", root)) as s:
        doc = verify(env, s.url, 8)
        table = run_cli(["verify", "--comfyui-url", s.url], env, check=8).stdout
    assert "does not search" in doc["comfyui"]["stale"]
    assert "loras/style/ink.safetensors" in doc["not_listed_by_comfyui"]
    assert RESTART in table


def test_stale_without_the_internal_route_still_says_restart(real_pod_migrated):
    root, env = real_pod_migrated
    rec = dict(recording("stale", root), folder_paths=None)
    with Served(rec) as s:
        doc = verify(env, s.url, 8)
    assert "lists none" in doc["comfyui"]["stale"]


def test_lists_from_before_the_run_are_stale_too(real_pod_migrated):
    """A server started before the run still lists the names (its files were in models/ then) but
    does not search the store."""
    root, env = real_pod_migrated
    with Served(recording("before", root)) as s:
        doc = verify(env, s.url, 8)
    assert doc["comfyui"]["stale"] and doc["not_listed_by_comfyui"] == []


def test_one_name_missing_is_reported_not_called_stale(real_pod_migrated):
    root, env = real_pod_migrated
    rec = recording("after", root)
    spec = rec["object_info"]["UpscaleModelLoader"]["input"]["required"]["model_name"]
    assert spec[0] == "COMBO"
    spec[1]["options"] = []
    rec["embeddings"] = [e for e in rec["embeddings"] if e != "neg/bad_hands"]
    with Served(rec) as s:
        doc = verify(env, s.url, 8)
    assert doc["not_listed_by_comfyui"] == ["embeddings/neg/bad_hands.safetensors",
                                             "upscale_models/4x_ultrasharp.safetensors"]
    assert doc["comfyui"]["stale"] is None


def test_unreachable_is_one_clear_line(real_pod_migrated):
    _, env = real_pod_migrated
    r = run_cli(["verify", "--comfyui-url", "http://127.0.0.1:9"], env, check=3)
    assert len(r.stderr.strip().splitlines()) == 1 and "object_info" in r.stderr


# --- the pure pieces on the recordings ----------------------------------------------------------------

def test_both_choice_forms_are_read():
    info = json.loads((REC / "after.json").read_text())["object_info"]
    unet = info["UNETLoader"]["input"]["required"]["unet_name"]
    upscale = info["UpscaleModelLoader"]["input"]["required"]["model_name"]
    assert isinstance(unet[0], list) and upscale[0] == "COMBO"
    assert "wan/high_noise.safetensors" in input_choices(unet)
    assert input_choices(upscale) == ["4x_ultrasharp.safetensors"]
    assert input_choices(["INT", {"default": 1}]) is None and input_choices(["COMBO", {}]) is None
    combos = {n for n, spec in info.items() for g in spec["input"].values() for v in g.values() if v[0] == "COMBO"}
    assert {"UpscaleModelLoader", "HypernetworkLoader", "PhotoMakerLoader", "AudioEncoderLoader",
            "LatentUpscaleModelLoader", "TripleCLIPLoader", "QuadrupleCLIPLoader"} <= combos


def test_embeddings_vae_approx_and_diffusers_are_matched_as_comfyui_shows_them():
    rec = json.loads((REC / "after.json").read_text())
    view = parse_server(rec["object_info"], rec["embeddings"], None)
    names = [m for m in real_pod.MODELS + list(real_pod.OTHER)]
    got = check_listed(names, view)
    assert got["not_listed"] == []
    assert "taesd" in view.choices[("VAELoader", "vae_name")] and "taef1" in view.choices[("VAELoader", "vae_name")]
    assert "taesdxl" not in view.choices[("VAELoader", "vae_name")]      # only its decoder is there
    # Without the encoder, the taesd decoder is not expected under any name.
    got = check_listed([n for n in names if n != "vae_approx/taesd_encoder.safetensors"],
                       parse_server(rec["object_info"], rec["embeddings"], None))
    assert got["not_listed"] == []
    # A server without /embeddings cannot say: unchecked, not missing.
    got = check_listed(["embeddings/EasyNegative.safetensors"], parse_server(rec["object_info"], None, None))
    assert {k: got[k] for k in ("not_listed", "checked", "unchecked")} == {
        "not_listed": [], "checked": 0, "unchecked": ["embeddings/EasyNegative.safetensors"]}


@pytest.mark.skipif(shutil.which("jq") is None, reason="no jq here")
@pytest.mark.parametrize("node, name, want", [("UNETLoader", "unet_name", "flux1-dev.safetensors"),
                                              ("UpscaleModelLoader", "model_name", "4x_ultrasharp.safetensors")])
def test_the_printed_check_line_reads_both_forms(node, name, want):
    info = json.loads((REC / "after.json").read_text())["object_info"]
    out = subprocess.run(["jq", "-c", report.choices_jq(node, name)], input=json.dumps(info),
                         capture_output=True, text=True, check=True)
    assert want in json.loads(out.stdout)


# --- issue 23: a URL that does not answer like ComfyUI; loaders found by their choices ----------------

class Answering:
    """A server answering every route with the same body (JSON or a web page)."""

    def __init__(self, body: bytes, kind: str = "application/json") -> None:
        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.srv = HTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.srv.server_port}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.mark.parametrize("body, kind", [
    (b"{}", "application/json"), (b"[]", "application/json"), (b'{"status": "ok", "version": 3}', "application/json"),
    (b'{"UNETLoader": "x"}', "application/json"), (b"<html><body>RunPod proxy</body></html>", "text/html"),
])
def test_a_url_that_does_not_answer_like_comfyui_is_an_error(real_pod_migrated, body, kind):
    """`{}`, `[]`, other JSON or a web page once gave "all good": now exit 3, one line."""
    _, env = real_pod_migrated
    with Answering(body, kind) as s:
        r = run_cli(["verify", "--comfyui-url", s.url], env, check=3)
    assert len(r.stderr.strip().splitlines()) == 1 and "object_info" in r.stderr, r.stderr
    assert "all good" not in r.stdout


def test_loaders_are_found_by_their_choices_not_by_a_table():
    """A loader no table knows (a custom node's, a newer ComfyUI's) counts when its choices are file
    names of a category; a choice list mostly of another category's names does not."""
    view = parse_server({
        "MyBgRemoval": {"input": {"required": {"model": [["birefnet.safetensors", "other.safetensors"], {}]}}},
        "Mixed": {"input": {"required": {"pick": [["a.safetensors", "b.safetensors", "c.safetensors",
                                                   "birefnet.safetensors"], {}]}}},
        "Plain": {"input": {"required": {"mode": [["fast", "slow"], {}]}}},
    })
    disk = {"background_removal": ["birefnet.safetensors", "other.safetensors"],
            "loras": ["a.safetensors", "b.safetensors", "c.safetensors"]}
    got = check_listed(["background_removal/birefnet.safetensors", "background_removal/gone.safetensors"], view, disk)
    assert got["loaders"]["background_removal"] == ["MyBgRemoval.model"]
    assert got["loaders"]["loras"] == ["Mixed.pick"]
    assert got["checked"] == 2 and got["not_listed"] == ["background_removal/gone.safetensors"]


REC_033 = ROOT / "fixtures" / "comfyui-0.33.0"


def recording_033(name: str, root: Path) -> dict:
    return json.loads((REC_033 / f"{name}.json").read_text().replace("{POD}", str(root)))


@pytest.fixture
def real_pod_033(tmp_path, cli_env):
    """The pod of the real check against ComfyUI 0.33.0 (its new folders and vae_approx files), migrated
    with ComfyUI 0.33's own folder_paths.py installed (its categories: the five new folders)."""
    from comfyui_oracle import oracle_dir
    root = tmp_path / "real"
    comfyui = root / "workspace" / "runpod-slim" / "ComfyUI"
    real_pod.build(str(comfyui / "models"), new=True)
    shutil.copyfile(oracle_dir("0.33.0") / "folder_paths.py", comfyui / "folder_paths.py")
    shutil.copyfile(oracle_dir("0.33.0") / "comfyui_version.py", comfyui / "comfyui_version.py")
    target = root / "workspace" / "models"
    env = dict(cli_env, COMFYUI_DIR=str(comfyui), COMFY_MIGRATE_TARGET=str(target))
    run_cli(["run", "--yes"], env)
    return root, env


def test_comfyui_033_lists_its_new_folders_and_vae_approx_files(real_pod_033):
    """0.33's loaders of its five new folders and its VAELoader's taef2 (a pair, by its family) and
    taehv.safetensors (by its file name) are checked, not counted "not in any list" or skipped."""
    root, env = real_pod_033
    with Served(recording_033("after", root)) as s:
        doc = verify(env, s.url, 0)
    c = doc["comfyui"]
    assert c["not_listed"] == [] and c["stale"] is None
    assert sorted(c["unchecked"]) == ["classifiers/aesthetic", "ultralytics/bbox/face_yolov8m.safetensors",
                                      "vae_approx/taesdxl_decoder.safetensors"]      # no list shows these
    assert c["checked"] == 27 + 1 + 7    # the 0.3.75 pod's 27, detection, 0.33's 7
    assert c["loaders"]["optical_flow"] == ["OpticalFlowLoader.model_name"]
    assert set(c["loaders"]["geometry_estimation"]) == {"LoadMoGeModel.model_name", "LoadDA3Model.model_name"}


def test_comfyui_033_stale_names_its_new_folders_too(real_pod_033):
    root, env = real_pod_033
    with Served(recording_033("stale", root)) as s:
        doc = verify(env, s.url, 8)
    assert "background_removal/birefnet.safetensors" in doc["not_listed_by_comfyui"]
    assert "vae_approx/taehv.safetensors" not in doc["not_listed_by_comfyui"]      # shown under no name: unchecked
    assert doc["comfyui"]["stale"]


# --- issue 21: the server's live search folders outrank any clock; a clock of whole seconds ---------

def test_live_search_folders_outrank_the_clock(real_pod_migrated):
    """A ComfyUI whose process start /proc puts before the YAML's last change, but whose live search
    folders (/internal/folder_paths) hold every store folder the YAML lists, is not stale (it was
    "restart it", exit 8: a start script that attaches then starts ComfyUI met it at every boot)."""
    import time
    from migrate.disk.running import find_running
    root, env = real_pod_migrated
    comfyui = Path(env["COMFYUI_DIR"])
    with Served(recording("after", root)) as s:
        (comfyui / "main.py").write_text("import time\ntime.sleep(60)\n")
        proc = subprocess.Popen([sys.executable, "main.py", "--port", s.url.rsplit(":", 1)[1]], cwd=str(comfyui))
        try:
            deadline = time.monotonic() + 10
            while not find_running(str(comfyui)) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.2)     # the YAML's last change is now over a second after the start
            yaml = comfyui / "extra_model_paths.yaml"
            yaml.write_bytes(yaml.read_bytes())
            doc = verify(env, s.url, 0)
            assert doc["comfyui"]["stale"] is None and doc["ok"]
        finally:
            proc.kill()
            proc.wait()


def test_a_start_within_the_clocks_step_may_be_stale_not_stale():
    """/proc gives a process start in whole seconds of btime (up to 1 s early): a server started just
    after the YAML changed must not be called stale by the clock alone; it "may be stale"."""
    from migrate.app.verify import ServerView, start_note, stale_server
    view = ServerView({}, None, None, 0)
    listed = {"checked": 0, "not_listed": []}
    changed = 1_000_000.4
    for started in (1_000_000.0, 999_999.5):      # started just after the change, read up to 1 s early
        assert stale_server([], view, {}, "/store", listed, started, changed) is None
        assert "may be stale" in start_note(view, started, changed)
    assert stale_server([], view, {}, "/store", listed, 999_999.3, changed) is not None   # a whole step before
    assert start_note(view, 1_000_000.5, changed) is None                                  # after it
    with_folders = ServerView({}, None, {"loras": ["/store/loras"]}, 0)
    assert start_note(with_folders, 1_000_000.0, changed) is None     # its folders decide, not the clock
