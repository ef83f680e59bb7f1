"""Rollback on stores that change mtimes or inode numbers under us (issue 20: rclone VFS, sshfs,
mergerfs), and a rollback that cannot bring every source back. End to end through the CLI, on real
trees; the FUSE behaviour itself is exercised by scripts/volumes (rclone, sshfs, mergerfs), while
these tests create its effects with real files: a stored copy that cannot be copied back, a stored
file whose inode number changed, the facts a store remembers from an earlier probe."""
from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from conftest import run_cli
from test_rollback import STATE, Small, assert_same, read_records, rollback, run, shm_dir  # noqa: F401,F811

from migrate.disk import fsops
from migrate.core.model import PROBE_PREFIX

SEEN = "fs-seen.json"        # in the store's state folder (SEEN)
WEAK = {"type": "fuse.rclone", "mtime_step_ns": 1, "stable_inode": False, "stable_mtime": False}


def section(pod: Small) -> bool:
    return "comfy_migrate:" in pod.yaml.read_text()


def test_a_source_that_cannot_come_back_keeps_the_yaml_section_until_a_second_rollback_brings_it(
        tmp_path, cli_env, shm_dir):
    """Purged quarantine, so every source comes back from the store's copy. One cannot (a file
    where its folder was): the YAML keeps its section (the name loads from the store), exit 1 with
    the command to run again; the run stays live (not 'rolled back already'); once the cause is
    gone a second rollback brings it back and gives everything back exactly."""
    pod = Small(tmp_path / "pod", shm_dir / "store")
    before = pod.snap()
    run(cli_env, pod)
    run_cli(["purge", "--target", str(pod.target), "--permanent", "--yes"], cli_env)
    blocked = pod.models / "clip"
    shutil.rmtree(blocked, ignore_errors=True)
    blocked.write_bytes(b"not a folder")

    res = rollback(cli_env, pod.target, "--yes", check=1)
    assert "rollback not finished" in res.stderr and "comfy-migrate rollback " in res.stderr, res.stderr
    assert "clip/te.safetensors" in res.stderr
    assert "the source is back" not in res.stdout + res.stderr
    assert section(pod), "the YAML's section must stay while a source is only in the store"
    assert (pod.target / "text_encoders" / "te.safetensors").is_file()
    assert (pod.models / "loras" / "style.safetensors").is_file(), "the others come back"
    hist = json.loads(run_cli(["history", "--target", str(pod.target), "--format", "json"], cli_env).stdout)
    assert [r["state"] for r in hist] == ["rollback incomplete"]

    again = rollback(cli_env, pod.target, "--yes", check=1)       # cause not fixed: still not finished
    assert "rolled back already" not in again.stdout + again.stderr and section(pod)

    blocked.unlink()
    done = rollback(cli_env, pod.target, "--yes")
    assert "rollback not finished" not in done.stderr
    assert_same(before, pod.snap(), "after the second rollback")
    hist = json.loads(run_cli(["history", "--target", str(pod.target), "--format", "json"], cli_env).stdout)
    assert [r["state"] for r in hist] == ["rolled back"]


def test_the_weakest_facts_a_store_remembers_decide_the_plan_and_are_never_strengthened(tmp_path, cli_env):
    """A store whose probe once found inode numbers unstable (rclone: they survive one rename and
    not the next) is planned as such though today's probe finds them stable: no source is unlinked
    by inode, and the run's header records the weakest facts for the store and for a source on it."""
    pod = Small(tmp_path / "pod")
    state = pod.target / STATE
    state.mkdir(parents=True)
    (state / SEEN).write_text(json.dumps(WEAK))
    doc = json.loads(run_cli(["plan", *pod.args("--format", "json")], cli_env).stdout)
    assert doc["target_filesystem"]["stable_inode"] is False
    assert not any(a.get("source_after") == "unlink" for a in doc["actions"]), doc["actions"]
    before = pod.snap()
    run(cli_env, pod)
    head = read_records(pod.run_log())[0]
    assert head["fs"][str(pod.target)]["stable_inode"] is False
    assert head["fs"][str(pod.models)]["stable_inode"] is False, "a source on the store's filesystem too"
    assert json.loads((state / SEEN).read_text())["stable_mtime"] is False, "never strengthened"
    rollback(cli_env, pod.target, "--yes")
    assert_same(before, pod.snap(), "after run + rollback")


def test_remembered_facts_only_ever_get_weaker(tmp_path):
    (tmp_path / STATE).mkdir()
    strong = {"type": "x", "mtime_step_ns": 1, "stable_inode": True, "stable_mtime": True}
    assert fsops.remember_weakest(str(tmp_path), strong) == strong
    fsops.remember_weakest(str(tmp_path), dict(strong, stable_inode=False, mtime_step_ns=1_000_000_000))
    got = fsops.remember_weakest(str(tmp_path), strong)
    assert (got["stable_inode"], got["stable_mtime"], got["mtime_step_ns"]) == (False, True, 1_000_000_000)
    assert fsops.seen_facts(str(tmp_path)) == got


def test_a_stored_file_whose_inode_changed_comes_back_where_a_later_probe_saw_inodes_flip(tmp_path, cli_env):
    """The run's probe found inode numbers stable (as rclone's can, by luck); afterwards the stored
    file shows another inode number with the same bytes and times (rclone gave it a new one). A
    probe that saw the flip (remembered by the store) makes rollback recognise the file by its
    content: the source comes back and the YAML goes back, exactly as before the run."""
    pod = Small(tmp_path / "pod")
    before = pod.snap()
    run(cli_env, pod)
    moved = [r for r in read_records(pod.run_log()) if r.get("type") == "begin" and r.get("op") in ("link", "rename")]
    assert moved, "same filesystem: sources are linked (or renamed) into the store"
    for r in moved:
        dst = r["dst"]
        st = os.lstat(dst)
        shutil.copyfile(dst, dst + ".new")
        os.chmod(dst + ".new", st.st_mode & 0o7777)
        os.utime(dst + ".new", ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(dst + ".new", dst)        # same bytes, mode and mtime: another inode number
    (pod.target / STATE / SEEN).write_text(json.dumps(WEAK))
    rollback(cli_env, pod.target, "--yes")
    assert_same(before, pod.snap(), "after run + rollback")


def test_a_probe_killed_mid_way_is_swept_by_the_next_command_with_the_folders_time(tmp_path, cli_env):
    """A kill inside the probe (before any log) leaves its scratch folder, and the folder's changed
    mtime, in the pod's models folder: the next command (here a rollback with nothing to undo)
    removes it by its name and puts the folder's mtime back."""
    pod = Small(tmp_path / "pod")
    models = str(pod.models)
    os.utime(models, ns=(1_650_000_000_000_000_000, 1_650_000_000_000_000_000))
    st = os.stat(models)
    # fsops.probe_fs's name: host, pid (here one that is gone), a random part, the folder's mtime before
    dead = os.path.join(models, f"{PROBE_PREFIX}{socket.gethostname()}-999999999-abcdef.m{st.st_mtime_ns}")
    os.mkdir(dead)
    Path(dead, "a").write_bytes(b"probe")
    assert os.stat(models).st_mtime_ns != st.st_mtime_ns
    res = rollback(cli_env, pod.target, "--comfyui", str(pod.comfyui), "--yes", check=None)
    assert res.returncode == 6, res.stderr          # no run to roll back
    assert not os.path.lexists(dead)
    assert os.stat(models).st_mtime_ns == st.st_mtime_ns


@pytest.mark.parametrize("times_move", [False, True])
def test_a_restore_copy_is_judged_by_its_digest_where_times_move(tmp_path, times_move):
    """copy_and_hash with mtime_may_move: a source whose mtime moved since its stat (rclone shows
    "now" while it has a file open) is still copied when device, inode and size hold; the digest it
    returns is what the caller checks against the log."""
    src = tmp_path / "a"
    src.write_bytes(b"x" * 1000)
    st = os.stat(src)
    expect = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns - 1_000_000_000)     # as if it moved
    tmp = str(tmp_path / "b")
    if times_move:
        digest, _ = fsops.copy_and_hash(str(src), expect, tmp, mtime_may_move=True)
        assert digest and Path(tmp).read_bytes() == src.read_bytes()
    else:
        with pytest.raises(OSError):
            fsops.copy_and_hash(str(src), expect, tmp)
        assert not os.path.exists(tmp)
