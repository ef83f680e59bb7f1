"""A container's own overlay disk (issue 20): models baked into the image (the lower layer), the
upper layer hidden (a container sees only the merged tree). Needs root (mounts, in a mount
namespace of its own that vanishes with the test); skipped otherwise, and where the kernel gives
overlay files no handles (Linux < 6.6): the volume suite (scripts/volumes) covers the same with
fuse-overlayfs and SIGKILL after every record."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import as_model

TESTS = os.path.dirname(os.path.abspath(__file__))

_IN_CONTAINER = r"""
import json, os, subprocess, sys
sys.path.insert(0, sys.argv[1])
from conftest import snapshot_tree
lower, upper, work, merged, target, out = sys.argv[2:8]
sh = lambda *c: subprocess.run(c, check=True, capture_output=True)
sh("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", merged)
comfy = os.path.join(merged, "ComfyUI")
with open(os.path.join(comfy, "models", "loras", "downloaded.safetensors"), "wb") as f:
    f.write(bytes.fromhex(os.environ["CM_DOWNLOADED"]))           # the pod downloaded it: the upper layer
# What a container sees of its upper layer: nothing (the host's folder holding it is hidden)
sh("mount", "-t", "tmpfs", "-o", "size=1m", "hidden-layers", os.path.dirname(upper))
def handles(path):     # does the kernel make a file handle (AT_HANDLE_FID) for an overlay file?
    import ctypes
    buf = ctypes.create_string_buffer(136)
    buf[0:4] = (128).to_bytes(4, sys.byteorder)
    fn = ctypes.CDLL(None).name_to_handle_at
    return fn(-100, os.fsencode(path), buf, ctypes.byref(ctypes.c_int()), 0x200) == 0
res = {"handles": handles(os.path.join(comfy, "models", "checkpoints", "base.safetensors"))}
before = snapshot_tree(comfy)
cli = lambda *a: subprocess.run([sys.executable, "-m", "migrate", *a], capture_output=True, text=True)
p = cli("plan", "--comfyui", comfy, "--target", target, "--format", "json")
res["plan"] = (p.returncode, p.stdout, p.stderr)
for args in (("run", "--yes", "--comfyui", comfy), ("verify", "--comfyui", comfy), ("rollback", "--yes")):
    p = cli(*args, "--target", target)
    res[args[0]] = (p.returncode, p.stdout + p.stderr)
after = snapshot_tree(comfy)
res["differs"] = sorted((k, str(before.get(k, ())[:5]), str(after.get(k, ())[:5]))
                       for k in set(before) | set(after) if before.get(k) != after.get(k))
with open(out, "w") as f:
    json.dump(res, f)
"""


def upper_files(upper: Path) -> dict:
    return {str(p.relative_to(upper)): p.stat().st_size for p in sorted(upper.rglob("*"))
            if stat.S_ISREG(p.lstat().st_mode)}


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root (overlay and tmpfs mounts in a mount namespace of its own)")
def test_image_layer_models_stay_and_the_container_disk_ends_no_fuller(tmp_path, cli_env):
    """Seen from inside the container: the image's models (a hardlinked pair among them) are copied
    to the store and stay, told by the kernel's file handles; the downloaded one is set aside.
    Rolled back, the merged tree is exactly as before and the container disk (upper layer) holds
    only what it held (the downloaded model) and the YAML the run rewrote, no model of the image."""
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "layers/upper", "layers/work", "merged"))
    models = lower / "ComfyUI" / "models"
    for rel, payload in (("checkpoints/base.safetensors", b"base" * 5000), ("loras/style.safetensors", b"st" * 4000),
                         ("vae/ae.safetensors", b"ae" * 3000)):
        (models / rel).parent.mkdir(parents=True, exist_ok=True)
        (models / rel).write_bytes(as_model(rel, payload))
    os.link(models / "loras/style.safetensors", models / "loras/second_name.safetensors")
    (lower / "ComfyUI" / "extra_model_paths.yaml").write_text("other:\n  base_path: /opt/x\n  loras: loras\n")
    for d in (upper, work, merged, tmp_path / "store"):
        d.mkdir(parents=True)
    out = tmp_path / "result.json"
    env = dict(cli_env, CM_DOWNLOADED=as_model("loras/downloaded.safetensors", b"dl" * 1500).hex(),
               PYTHONPATH=os.path.dirname(TESTS))
    p = subprocess.run(["unshare", "--mount", sys.executable, "-c", _IN_CONTAINER, TESTS, *map(str, (
        lower, upper, work, merged, tmp_path / "store" / "models", out))], env=env, capture_output=True, text=True)
    if p.returncode != 0 and "mount" in p.stderr:
        pytest.skip(f"cannot mount an overlay here: {p.stderr.strip()[-200:]}")
    assert p.returncode == 0, p.stderr
    res = json.loads(out.read_text())
    if not res["handles"]:
        pytest.skip("this kernel gives overlay files no handles (Linux < 6.6): layers are unknown here")
    assert res["plan"][0] == 0, res["plan"][2]
    acts = {a["source"].split("/models/", 1)[1]: a for a in json.loads(res["plan"][1])["actions"]}
    image = ("checkpoints/base.safetensors", "loras/style.safetensors", "loras/second_name.safetensors",
             "vae/ae.safetensors")
    for rel in image:
        assert "image layer" in acts[rel]["reason"], acts[rel]
        assert acts[rel]["source_after"] in ("none", "stays"), acts[rel]
    assert acts["loras/downloaded.safetensors"]["source_after"] not in ("none", "stays")
    for step in ("run", "verify", "rollback"):
        assert res[step][0] == 0, (step, res[step][1])
    # Exactly as before; the YAML has its bytes, mode and mtime back under a new inode (written anew)
    assert [d[0] for d in res["differs"]] in ([], ["extra_model_paths.yaml"]), res["differs"]
    for name, was, now in res["differs"]:
        assert was.split(",")[:3] == now.split(",")[:3] and was.split(",")[4:] == now.split(",")[4:], (was, now)
    assert upper_files(upper) == {"ComfyUI/extra_model_paths.yaml": len(
        (lower / "ComfyUI" / "extra_model_paths.yaml").read_bytes()),
        "ComfyUI/models/loras/downloaded.safetensors": len(as_model("loras/downloaded.safetensors", b"dl" * 1500))}
