"""docs/reference.md's exit-code table, a case per row: the real CLI ends with that code and one line."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess

import pytest

from conftest import ROOT, run_cli, run_leaving_conflicts, snapshot_tree
from migrate.core.errors import ExitCode
from migrate.core.model import STATE_DIR


def documented_codes(doc: str = os.path.join("docs", "reference.md")) -> set:
    text = open(os.path.join(ROOT, doc)).read()
    table = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m) for m in re.findall(r"^\| (\d+) \|", table, re.M)}


def test_the_table_documents_every_code_the_tool_has():
    ours = {v for k, v in vars(ExitCode).items() if k.isupper()}
    assert documented_codes() == ours
    assert documented_codes("README.md") == ours          # the README's short table too (issue 15)


def hold_lock(target, pid: int) -> None:
    from migrate.disk.lock import boot_id, pid_namespace
    sd = target / STATE_DIR
    sd.mkdir(parents=True, exist_ok=True)
    (sd / "lock").write_text(json.dumps({"host": socket.gethostname(), "boot_id": boot_id(), "pidns": pid_namespace(), "pid": pid,
                                         "started": "x", "purpose": "test"}))


def small_tmpfs(path) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("code", sorted(documented_codes() - {ExitCode.INTERRUPTED}))
def test_each_documented_exit_code(code, pod, cli_env, tmp_path):
    args, env, cleanup = None, cli_env, []
    if code == 0:
        args = ["plan", *pod.args()]
    elif code == 1:
        args = ["audit", "--comfyui", pod.comfyui, "--target", pod.target]   # the demo pod's two broken files
    elif code == 2:
        args = ["plan", "--mode", "sideways", *pod.args()]
    elif code == 3:
        args = ["plan", "--comfyui", tmp_path / "nowhere", "--target", pod.target]
    elif code == 4:
        if os.geteuid() != 0 or not small_tmpfs(tmp_path / "tiny"):
            pytest.skip("needs root to mount a 1 MiB tmpfs")
        cleanup.append(lambda: subprocess.run(["umount", "-l", str(tmp_path / "tiny")]))
        args = ["run", "--comfyui", pod.comfyui, "--target", tmp_path / "tiny", "--yes"]
    elif code == 5:
        sleeper = subprocess.Popen(["sleep", "60"])
        cleanup.append(lambda: (sleeper.kill(), sleeper.wait()))
        hold_lock(pod.target, sleeper.pid)
        args = ["run", *pod.args("--yes", "--wait", "0")]
    elif code == 6:
        args = ["history", "--target", tmp_path]                         # not a store
    elif code == 7:
        args = ["run", *pod.args()]                                      # no terminal, no --yes
    elif code == 8:
        run_leaving_conflicts(pod.args("--yes"), cli_env)
        victim = pod.target / "diffusion_models" / "wan2.2_s2v_14B_fp8_scaled.safetensors"
        data = bytearray(victim.read_bytes())
        data[-1] ^= 0xFF
        victim.write_bytes(bytes(data))                                  # same size, other bytes
        args = ["verify", "--comfyui", pod.comfyui, "--target", pod.target]
    before = snapshot_tree(pod.comfyui) if code not in (0, 8) else None
    try:
        proc = run_cli(args, env, check=code)
    finally:
        for c in cleanup:
            c()
    if code == 8:      # verify's findings are its report (stdout), naming the file
        assert "wan2.2_s2v_14B_fp8_scaled.safetensors" in proc.stdout and "problems found" in proc.stdout
    elif code >= 2:    # a refusal or failure names itself on stderr, in one line, never a traceback
        assert "Traceback" not in proc.stderr and proc.stderr.strip(), proc.stderr
        if code in (3, 4, 5, 6, 7):
            assert len([line for line in proc.stderr.splitlines() if "error" in line]) <= 1, proc.stderr
    if before is not None and code != 1:
        assert snapshot_tree(pod.comfyui) == before                      # nothing half-done
