"""A hostile new user's findings (issue 15, second pass): each says what it found, truthfully.

Real pods in tmp_path, the real CLI as a subprocess; privileges dropped with setpriv and a
read-only bind mount where root is needed (skipped otherwise).
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

from conftest import as_model, make_pod, run_cli, snapshot_tree

STATE = ".comfy-migrate"


def small_pod(tmp_path: Path, n: int = 3):
    """ComfyUI with n loras and an empty store: no conflict, nothing held back."""
    comfyui = tmp_path / "ComfyUI"
    (comfyui / "main.py").parent.mkdir(parents=True)
    (comfyui / "main.py").write_text("")
    for i in range(n):
        p = comfyui / "models" / "loras" / f"l{i}.safetensors"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(as_model(p.name, bytes([65 + i]) * (20000 + i)))
    store = tmp_path / "store"
    store.mkdir()
    return comfyui, store, ["--comfyui", str(comfyui), "--target", str(store)]


def without_dac(argv: list) -> list:
    """argv run as root without the capabilities that let root read any file (chmod 000 then bites)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop CAP_DAC_OVERRIDE")
    return ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search", *argv]


def test_an_unreadable_file_is_said_once(tmp_path, cli_env):
    comfyui, store, args = small_pod(tmp_path)
    bad = comfyui / "models" / "loras" / "l0.safetensors"
    os.chmod(bad, 0)
    cmd = without_dac([sys.executable, "-m", "migrate", "run", *args, "--yes", "--format", "json"])
    p = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, cwd=cli_env["HOME"], timeout=60)
    if p.returncode == 0 and os.access(bad, os.R_OK):
        pytest.skip("setpriv did not take the capability away here")
    assert p.returncode == 1, p.stderr
    stayed = json.loads(p.stdout)["stayed"]
    assert stayed == [{"path": str(bad), "why": "unreadable"}]
    table = subprocess.run(without_dac([sys.executable, "-m", "migrate", "run", *args, "--yes"]), env=cli_env,
                           capture_output=True, text=True, cwd=cli_env["HOME"], timeout=60)
    assert table.returncode == 1
    assert "1 model file(s) stayed where they are, not in the store (1 unreadable; " in table.stderr
    os.chmod(bad, 0o644)
    run_cli(["rollback", "--target", store, "--yes"], cli_env)


def test_include_suspect_says_the_held_files_move(pod, cli_env):
    bad = pod.models / "loras" / "cut_short.safetensors"
    bad.write_bytes(make_pod.safetensors_bytes(64 << 10, "cut")[:-4096])
    p = run_cli(["run", *pod.args("--yes", "--include-suspect")], cli_env, check=1)    # the conflict stays
    line = next(ln for ln in p.stderr.splitlines() if "the audit found" in ln)
    assert "1 move all the same (--include-suspect)" in line, line
    assert "2 file(s) stay where they are" in line, line          # the demo's empty and .part files


def test_files_that_all_broke_while_run_waited_leave_exit_1_not_up_to_date(tmp_path, cli_env):
    comfyui, store, args = small_pod(tmp_path)
    files = sorted((comfyui / "models" / "loras").iterdir())
    holder = subprocess.Popen([sys.executable, "-c", (          # another pod's run: the CLI's own lock
        "import os, sys, time\n"
        "from migrate.disk.lock import TargetLock\n"
        "l = TargetLock(sys.argv[1], 'a test holder').acquire()\n"
        "print('held', flush=True)\n"
        "while not os.path.exists(sys.argv[2]): time.sleep(0.05)\n"
        "l.release()\n"), str(store / STATE), str(tmp_path / "go")],
        stdout=subprocess.PIPE, text=True, env=cli_env)
    assert holder.stdout.readline().strip() == "held"
    p = subprocess.Popen([sys.executable, "-m", "migrate", "run", *args, "--yes", "--wait", "30"], env=cli_env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=cli_env["HOME"])
    # The run has made its plan and waits for the lock once it says so (a fixed sleep raced with a
    # slow start on a busy machine: files cut before the scan are another case).
    said = []
    while not said or "waiting for the target's lock" not in said[-1]:
        said.append(p.stderr.readline())
        assert said[-1], "".join(said)                # the run ended without waiting
    for f in files:                                   # every file cut short meanwhile: broken now
        f.write_bytes(f.read_bytes()[:-500])
    (tmp_path / "go").touch()
    out, err = p.communicate(timeout=60)
    err = "".join(said) + err
    holder.wait(10)
    assert p.returncode == 1, err
    assert "the target is up to date" not in err
    assert f"{len(files)} model file(s) stayed where they are, not in the store ({len(files)} held-back; " in err
    assert all(f.exists() for f in files)


@pytest.mark.parametrize("command", ["run", "rollback", "purge"])
@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e400", ""])
def test_wait_takes_only_a_finite_number_of_seconds(tmp_path, cli_env, command, value):
    comfyui, store, args = small_pod(tmp_path, 1)
    extra = args if command == "run" else ["--target", str(store)]
    before = snapshot_tree(tmp_path)
    p = run_cli([command, *extra, "--yes", "--wait", value], cli_env, check=2)
    assert "--wait" in p.stderr and "Traceback" not in p.stderr
    assert snapshot_tree(tmp_path) == before


def test_comfy_migrate_format_json_reaches_history_and_verify(tmp_path, cli_env):
    comfyui, store, args = small_pod(tmp_path)
    env = dict(cli_env, COMFY_MIGRATE_FORMAT="json")
    run_cli(["run", *args, "--yes"], env)
    rows = json.loads(run_cli(["history", "--target", store], env).stdout)
    assert [r["state"] for r in rows] == ["complete"]
    doc = json.loads(run_cli(["verify", *args], env).stdout)
    assert doc["names_checked"] == 3
    err = run_cli(["history", "--target", tmp_path / "nowhere"], env, check=6)
    assert json.loads(err.stdout)["error"]["exit_code"] == 6


def test_purge_on_a_store_without_runs_does_not_speak_of_rollback(tmp_path, cli_env):
    comfyui, store, args = small_pod(tmp_path)
    (store / STATE / "runs").mkdir(parents=True)
    p = run_cli(["purge", "--comfyui", str(comfyui), "--target", str(store), "--yes"], cli_env, check=6)
    assert "roll back" not in p.stderr and "no run yet" in p.stderr, p.stderr


def test_the_models_folder_as_target_is_named_without_a_symlink_story(tmp_path, cli_env):
    comfyui, store, args = small_pod(tmp_path)
    p = run_cli(["plan", "--comfyui", comfyui, "--target", comfyui / "models"], cli_env, check=3)
    assert "same folder" in p.stderr and "--target names ComfyUI's models folder" in p.stderr


@pytest.fixture
def ro_bind():
    """mount --bind DIR DIR, then remount it read-only (root only); unmounted afterwards."""
    made = []

    def make(path: Path) -> None:
        if os.geteuid() != 0:
            pytest.skip("needs root for a read-only bind mount")
        if subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True).returncode:
            pytest.skip("mount --bind refused here")
        made.append(path)
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], capture_output=True).returncode:
            pytest.skip("a read-only remount refused here")
    yield make
    for p in reversed(made):
        subprocess.run(["umount", "-l", str(p)], capture_output=True)


def test_a_read_only_bind_mount_is_named_as_such(tmp_path, cli_env, ro_bind):
    comfyui, store, args = small_pod(tmp_path)
    ro_bind(comfyui / "models" / "loras")
    p = run_cli(["plan", *args], cli_env, check=3)
    assert "not writable (a read-only filesystem)" in p.stderr, p.stderr
    assert "--mode copy" in p.stderr


def test_history_marks_an_attach(tmp_path, cli_env):
    """An attach is a YAML-only run in the store's history: before, its row read like a migration
    that moved nothing ("0", "0 B"), with no word of attach in the table or the JSON."""
    comfyui, store, args = small_pod(tmp_path)
    run_cli(["run", *args, "--yes"], cli_env)
    second = tmp_path / "second" / "ComfyUI"
    second.mkdir(parents=True)
    (second / "main.py").write_text("")
    run_cli(["attach", "--comfyui", second, "--target", store, "--yes"], cli_env)
    rows = json.loads(run_cli(["history", "--target", store, "--format", "json"], cli_env).stdout)
    assert [r["kind"] for r in rows] == ["run", "attach"], rows
    lines = run_cli(["history", "--target", store], cli_env).stdout.splitlines()
    assert [line for line in lines if "attach (YAML only)" in line] == [lines[-1]], lines


@pytest.mark.parametrize("command", ["rollback", "purge", "attach"])
def test_a_read_only_store_is_refused_with_exit_3_before_anything_changes(tmp_path, cli_env, ro_bind, command):
    """rollback, purge and attach on a store mounted read-only: before, exit 1 ("finished, but some
    files failed") with "file operation .../lock: Permission denied (nothing was lost: `comfy-migrate
    run` (continues this run) ...": no run had begun, and run was not what to do."""
    comfyui, store, args = small_pod(tmp_path)
    (store / "loras").mkdir()      # a copy stored already: the pod's goes to quarantine (for purge)
    shutil.copy2(comfyui / "models" / "loras" / "l0.safetensors", store / "loras" / "l0.safetensors")
    run_cli(["run", *args, "--yes"], cli_env)
    if command == "attach":
        comfyui = tmp_path / "second" / "ComfyUI"
        comfyui.mkdir(parents=True)
        (comfyui / "main.py").write_text("")
    ro_bind(store)
    before = snapshot_tree(tmp_path)
    p = run_cli([command, "--comfyui", comfyui, "--target", store, "--yes"], cli_env, check=3)
    (line,) = p.stderr.splitlines()
    assert f"error: the target {store} is not writable (a read-only filesystem at " in line, line
    assert f"comfy-migrate {command} takes the lock" in line and "comfy-migrate run" not in line, line
    doc = json.loads(run_cli([command, "--comfyui", comfyui, "--target", store, "--yes", "--format", "json"],
                             cli_env, check=3).stdout)
    assert doc["error"]["exit_code"] == 3, doc
    assert snapshot_tree(tmp_path) == before


def test_an_interrupted_attach_is_finished_by_the_next_attach(tmp_path, cli_env):
    """Ctrl-C during attach: the message names the attach and how to finish or undo it, and the
    next attach continues its log. Before: a bare "interrupted", then every attach refused (exit 3)
    with "an interrupted run ... is pending (finish it with `comfy-migrate run` ...)": run migrates."""
    comfyui, store, args = small_pod(tmp_path)
    run_cli(["run", *args, "--yes"], cli_env)
    second = tmp_path / "second" / "ComfyUI"
    second.mkdir(parents=True)
    (second / "main.py").write_text("")
    attach = ["attach", "--comfyui", second, "--target", store, "--yes"]
    p = run_cli(attach, dict(cli_env, COMFY_MIGRATE_CRASH_AT="int:2"), check=130)
    line = p.stderr.splitlines()[-1]
    assert "stopped part-way" in line and f"`comfy-migrate attach --comfyui {second} --target {store} --yes` again" in line, line
    run_cli(attach, cli_env)
    rows = json.loads(run_cli(["history", "--target", store, "--format", "json"], cli_env).stdout)
    assert [(r["kind"], r["state"]) for r in rows] == [("run", "complete"), ("attach", "complete")], rows
    assert str(store) in (second / "extra_model_paths.yaml").read_text()
    run_cli(["verify", "--comfyui", second, "--target", store], cli_env)


def test_ctrl_c_after_the_run_closed_its_log_does_not_say_nothing_changed(tmp_path, cli_env):
    """A Ctrl-C landing after the run's last record (its log closed, every file moved): before, the
    message said "the run stopped before its first step; nothing was changed"."""
    twin = tmp_path / "twin"
    twin.mkdir()
    _, twin_store, twin_args = small_pod(twin)
    run_cli(["run", *twin_args, "--yes"], cli_env)
    (log,) = (twin_store / STATE / "runs").glob("*.jsonl")
    records = len(log.read_text().splitlines())
    comfyui, store, args = small_pod(tmp_path)
    p = run_cli(["run", *args, "--yes"], dict(cli_env, COMFY_MIGRATE_CRASH_AT=f"int:{records}"), check=130)
    line = p.stderr.splitlines()[-1]
    assert "had finished when interrupted (its log is closed)" in line and "nothing was changed" not in line, line
    assert not list((comfyui / "models" / "loras").glob("*.safetensors"))


def test_verify_refuses_a_damaged_log_of_this_pod_instead_of_leaving_it_out(tmp_path, cli_env):
    """One of the pod's two run logs edited: verify left it out and checked the other run only, exit 0
    "all good" (with only one run: "no run of this pod to verify"); rollback refused the same log.
    Now verify refuses it too (exit 6), naming the line."""
    comfyui, store, args = small_pod(tmp_path)
    run_cli(["run", *args, "--yes"], cli_env)
    extra = comfyui / "models" / "loras" / "later.safetensors"
    extra.write_bytes(as_model(extra.name, b"L" * 30000))
    run_cli(["run", *args, "--yes"], cli_env)
    first = sorted((store / STATE / "runs").glob("*.jsonl"))[0]
    lines = first.read_text().splitlines(keepends=True)
    n = next(i for i, rec in enumerate(lines) if "l1.safetensors" in rec)
    lines[n] = lines[n].replace("l1.safetensors", "l7.safetensors")
    first.write_text("".join(lines))
    p = run_cli(["verify", *args], cli_env, check=6)
    (line,) = p.stderr.splitlines()
    assert f"{first}: line {n + 1} was altered" in line and "restore the original" in line, line
    assert json.loads(run_cli(["verify", *args, "--format", "json"], cli_env, check=6).stdout)["error"]["exit_code"] == 6


@pytest.mark.parametrize("wrong", ["missing", "file"])
def test_verify_refuses_a_comfyui_folder_that_is_not_one(tmp_path, cli_env, wrong):
    """`verify --comfyui` mistyped: before, it fell back to this host's runs and said "all good"
    (exit 0) about a pod it never looked at; rollback and purge refused the same option (exit 3)."""
    comfyui, store, args = small_pod(tmp_path)
    run_cli(["run", *args, "--yes"], cli_env)
    bad = tmp_path / "ComfyUl"
    if wrong == "file":
        bad.write_text("")
    p = run_cli(["verify", "--comfyui", bad, "--target", store], cli_env, check=3)
    (line,) = p.stderr.splitlines()
    assert f"ComfyUI folder {bad} " in line and "all good" not in p.stdout, p.stdout + p.stderr


def test_attach_with_nothing_to_write_still_says_attached_beside_a_damaged_log(tmp_path, cli_env):
    """A start script runs attach at every boot: a damaged log in the store does not turn "attached
    already" into a failure (exit 6) when attach has nothing to write (the check for an interrupted
    attach to continue reads the logs)."""
    comfyui, store, args = small_pod(tmp_path)
    run_cli(["run", *args, "--yes"], cli_env)
    (log,) = (store / STATE / "runs").glob("*.jsonl")
    lines = log.read_text().splitlines(keepends=True)
    lines[3] = "{" + lines[3]
    log.write_text("".join(lines))
    p = run_cli(["attach", *args, "--yes"], cli_env)
    assert "attached already" in p.stderr, p.stderr
