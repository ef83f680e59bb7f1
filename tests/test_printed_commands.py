"""Every command the tool prints runs as printed: complete (its --target), shell-quoted (a store
path with spaces and a quote), and doing what the line says."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_pod, run_cli, run_leaving_conflicts, snapshot_tree


def shell(line: str, env: dict, stdin: str = "") -> subprocess.CompletedProcess:
    """Run a printed line through a real shell, with `comfy-migrate` on PATH as installed."""
    bindir = str(Path(sys.executable).parent)
    assert shutil.which("comfy-migrate", path=bindir), "the console script is not installed in the venv"
    return subprocess.run(["bash", "-c", line], env=dict(env, PATH=bindir + os.pathsep + env["PATH"]),
                          input=stdin, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_printed_purge_and_rollback_lines_run_as_printed(tmp_path, cli_env):
    root = tmp_path / "my volume's pods"            # a space and a quote: the line must be quoted
    comfyui, target = make_pod.build(str(root))
    before = snapshot_tree(root)
    out = run_leaving_conflicts(["--comfyui", comfyui, "--target", target, "--yes"], cli_env).stdout
    purge = re.search(r"free it with: (comfy-migrate purge .*)$", out, re.M).group(1)
    undo = re.search(r"undo with: (comfy-migrate rollback .*)$", out, re.M).group(1)
    verify = re.search(r"^  (comfy-migrate verify .*)$", out, re.M).group(1)
    assert str(target) not in purge and "'" in purge                # quoted, not pasted raw

    # As printed, without a terminal: each reaches its question about THIS run (exit 7, not confirmed)
    asked = shell(purge, cli_env)
    assert asked.returncode == 7, asked.stderr
    assert shell(purge + " --permanent --yes", cli_env).returncode == 0
    # verify's line asks a ComfyUI that is not running: it says so (exit 3), having found the store
    v = shell(verify.replace("http://127.0.0.1:8188", "http://127.0.0.1:9"), cli_env)
    assert v.returncode == 3 and "127.0.0.1:9" in v.stderr, v.stderr
    asked = shell(undo, cli_env)
    assert asked.returncode == 7 and "rollback of run" in asked.stdout, asked.stderr
    done = shell(undo + " --yes", cli_env)
    assert done.returncode == 0, done.stderr
    # the pod as before (purged files come back as copies: new inode numbers, all else equal)
    def pod(snap):
        return {k: v[:3] + v[4:] for k, v in snap.items() if k.startswith("runpod-slim/")}
    assert pod(snapshot_tree(root)) == pod(before)
