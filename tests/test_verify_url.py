"""verify --comfyui-url against a small local HTTP server that plays ComfyUI's /object_info."""
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures"))
import make_pod  # noqa: E402


def serve(listing):
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"UNETLoader": {"input": {"required": {"unet_name": [listing, {}]}}},
                               "Other": {"input": {"optional": {"x": ["INT", {}]}}}}).encode()
            self.send_response(200 if self.path == "/object_info" else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture
def migrated(tmp_path):
    comfy, target = make_pod.build(str(tmp_path / "ws"))
    env = dict(os.environ, HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"),
               COMFYUI_DIR=comfy, COMFY_MIGRATE_TARGET=target)
    subprocess.run([sys.executable, "-m", "migrate", "run", "--yes"], env=env, check=True, capture_output=True)
    return env, target


def test_verify_url_all_listed(migrated):
    env, target = migrated
    names = []
    for d, _, files in os.walk(target):
        if ".comfy-migrate" in d:
            continue
        names += [os.path.relpath(os.path.join(d, f), target).split("/", 1)[1] for f in files]
    srv = serve(sorted(names))
    try:
        r = subprocess.run([sys.executable, "-m", "migrate", "verify", "--format", "json", "--comfyui-url",
                            f"http://127.0.0.1:{srv.server_port}"], env=env, capture_output=True, text=True)
    finally:
        srv.shutdown()
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["not_listed_by_comfyui"] == []


def test_verify_url_reports_a_name_comfyui_does_not_list(migrated):
    env, _ = migrated
    srv = serve(["something_else.safetensors"])
    try:
        r = subprocess.run([sys.executable, "-m", "migrate", "verify", "--format", "json", "--comfyui-url",
                            f"http://127.0.0.1:{srv.server_port}"], env=env, capture_output=True, text=True)
    finally:
        srv.shutdown()
    assert r.returncode == 8
    assert "wan2.2_s2v_14B_fp8_scaled.safetensors" in json.loads(r.stdout)["not_listed_by_comfyui"]


def test_verify_url_unreachable_is_one_clear_line(migrated):
    env, _ = migrated
    r = subprocess.run([sys.executable, "-m", "migrate", "verify", "--comfyui-url", "http://127.0.0.1:9"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 3
    assert len(r.stderr.strip().splitlines()) == 1 and "object_info" in r.stderr
