"""Issue 23, "every name keeps its model or the plan refuses" and the newcomer's smaller findings:
each test runs the real CLI and failed on the code before its fix."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from conftest import run_cli, run_leaving_conflicts, snapshot_tree
from migrate.model import STATE_DIR


# --- the smaller findings ------------------------------------------------------------------------------

def test_a_bogus_base_path_is_a_bad_option(pod, cli_env):
    """--base-path bogus is a bad option value (2), as --mode sideways is; an unset env:VAR is a fact of the pod (3)."""
    proc = run_cli(["plan", *pod.args("--base-path", "bogus")], cli_env, check=2)
    assert "--base-path" in proc.stderr and "absolute, relative or env:VAR" in proc.stderr
    run_cli(["plan", *pod.args("--base-path", "env:9NOPE")], cli_env, check=2)
    env = dict(cli_env)
    env.pop("NOT_SET_HERE", None)
    run_cli(["plan", *pod.args("--base-path", "env:NOT_SET_HERE")], env, check=3)


def test_a_format_from_the_environment_blames_the_variable(pod, cli_env):
    proc = run_cli(["plan", *pod.args()], dict(cli_env, COMFY_MIGRATE_FORMAT="yaml"), check=2)
    assert "COMFY_MIGRATE_FORMAT" in proc.stderr and "'--format'" not in proc.stderr, proc.stderr
    proc = run_cli(["plan", *pod.args("--format", "yaml")], cli_env, check=2)
    assert "'--format'" in proc.stderr                          # typed: the option is named


def test_a_plan_that_does_not_fit_exits_4(pod, cli_env, tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tiny)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a 1 MiB tmpfs")
    try:
        for args in (["plan"], ["plan", "--format", "json"], ["run", "--dry-run"]):
            proc = run_cli([*args, "--comfyui", pod.comfyui, "--target", tiny], cli_env, check=4)
            assert "DOES NOT FIT" in proc.stdout if "json" not in args else json.loads(proc.stdout)["actions"]
            assert "does not fit" in proc.stderr
    finally:
        subprocess.run(["umount", "-l", str(tiny)])


def test_a_corrupt_lock_is_named_and_taken_over(pod, cli_env):
    lock = pod.target / STATE_DIR / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("\x00garbage{")
    proc = run_cli(["run", *pod.args("--yes", "--wait", "0")], cli_env, check=5)       # just written: named
    assert str(lock) in proc.stderr, proc.stderr
    old = time.time() - 60
    os.utime(lock, (old, old))            # a minute old, far inside the 10-minute lease: garbage, not a holder
    proc = run_leaving_conflicts(pod.args("--yes", "--wait", "0"), cli_env)
    assert "took over a stale lock" in proc.stderr and str(lock) in proc.stderr, proc.stderr
    assert not lock.exists()
