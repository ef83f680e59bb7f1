"""Every choice follows from the probe (issue 14): pure plans over probed filesystem facts (no disk)."""
from __future__ import annotations

from test_plan import OTHER_FS, SAME_FS, SRC, TGT, brief, plan_of, rec

from migrate.core.model import UNPROBED, ActionKind, Method, Removal
from migrate.core.plan import LOWER, UNKNOWN

EXFAT = UNPROBED._replace(fstype="fuse.exfat", hardlink=False, symlink=False, mtime_step_ns=10_000_000)
RCLONE = UNPROBED._replace(fstype="fuse.rclone", hardlink=False, symlink=False, stable_inode=False)
SSHFS = UNPROBED._replace(fstype="fuse.sshfs", stable_inode=False)
NO_SYMLINKS = UNPROBED._replace(symlink=False)


def test_a_store_without_links_gets_symlinks_then_copies_whose_bytes_the_plan_counts():
    a, b = rec("loras/a.pt", "d1", size=100), rec("loras/b.pt", "d1", size=100)
    no_hard = plan_of(a, b, probe=OTHER_FS, target_fs=UNPROBED._replace(hardlink=False))
    assert [x[3] for x in brief(no_hard)] == ["copy", "symlink"] and no_hard.bytes_to_copy == 100
    neither = plan_of(a, b, probe=OTHER_FS, target_fs=EXFAT)
    assert [(x[0], x[3]) for x in brief(neither)] == [("move", "copy"), ("same-content", "copy")]
    assert neither.bytes_to_copy == 200 and "a second copy" in neither.actions[1].reason


def test_unstable_inode_numbers_move_by_rename_and_never_unlink_by_inode():
    same = rec("loras/a.pt", "d1", ino=7)
    plan = plan_of(same, probe=SAME_FS._replace(fs=SSHFS), target_fs=SSHFS)
    assert (plan.actions[0].method, plan.actions[0].removal) == (Method.RENAME, Removal.RENAMED)
    there = rec("loras/a.pt", "d1", ino=7, root=TGT)
    plan = plan_of(same, target=[there], probe=SAME_FS._replace(fs=SSHFS), target_fs=SSHFS)
    assert (plan.actions[0].kind, plan.actions[0].removal) == (ActionKind.ALREADY_THERE, Removal.QUARANTINE)


def test_custom_node_folders_stay_where_their_filesystem_refuses_symlinks():
    plan = plan_of(rec("insightface/models/a.onnx", "d1"), rec("loras/b.pt", "d2"),
                   probe=OTHER_FS._replace(fs=NO_SYMLINKS))
    kinds = {a.rel: (a.kind, a.link_back) for a in plan.actions}
    assert kinds["insightface/models/a.onnx"][0] is ActionKind.SKIP
    assert "without symlinks" in plan.actions[0].reason or "without symlinks" in plan.actions[1].reason
    assert kinds["loras/b.pt"] == (ActionKind.MOVE, False)


def test_symlinks_that_cannot_lead_out_of_their_folder_are_not_planned():
    """sshfs refuses a symlink whose text holds `..` (or is absolute): the probe says so (up_links),
    so a custom-node folder on it stays, and a store like it gets a second copy, not a symlink."""
    no_up = UNPROBED._replace(fstype="fuse.sshfs", up_links=False)
    plan = plan_of(rec("insightface/models/a.onnx", "d1"), probe=OTHER_FS._replace(fs=no_up))
    assert plan.actions[0].kind is ActionKind.SKIP and "lead out of their folder" in plan.actions[0].reason
    a, b = rec("loras/a.pt", "d1", size=100), rec("loras/b.pt", "d1", size=100)
    plan = plan_of(a, b, probe=OTHER_FS, target_fs=no_up._replace(hardlink=False))
    assert [x[3] for x in brief(plan)] == ["copy", "copy"]


def test_files_of_an_image_layer_or_of_a_layer_not_known_are_copied_and_stay():
    """Renaming a file of an overlay's image layer copies it up onto the container disk (issue 20:
    after rollback the disk held every such model twice): never renamed, linked or set aside, even
    within the overlay; where the layer cannot be told (fuse-overlayfs), likewise. The plan says so."""
    a, b, c = rec("loras/a.pt", "d1", size=100), rec("loras/b.pt", "d2", size=50), rec("loras/c.pt", "d3", size=7)
    plan = plan_of(a, b, c, probe=SAME_FS, layers={a.path: LOWER, b.path: UNKNOWN}, container_free=10)
    low, unk, upper = plan.actions
    assert (low.method, low.removal, low.link_back) == (Method.COPY, Removal.NONE, False)
    assert "image layer" in low.reason
    assert (unk.method, unk.removal, unk.link_back) == (Method.COPY, Removal.NONE, False)
    assert "cannot be told apart" in unk.reason
    assert upper.removal is not Removal.NONE          # the writable layer's own file moves as anywhere
    assert plan.container_bytes == 0 and plan.container_fits
    assert any("1 source file(s) in a read-only image layer stay" in w for w in plan.warnings)
    assert any("1 source file(s) on an overlay whose layers cannot be told apart" in w for w in plan.warnings)
    assert TGT and SRC


def test_probe_leaves_nothing_and_a_killed_probes_scratch_is_never_scanned_and_swept(tmp_path):
    import os

    from migrate.disk import fsops
    from migrate.core.model import PROBE_PREFIX
    from migrate.disk.scan import scan_tree
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "a.pt").write_bytes(b"x")
    before = sorted(os.listdir(tmp_path)), os.stat(tmp_path).st_mtime_ns
    fs = fsops.probe_fs(str(tmp_path))
    assert (fs.hardlink, fs.symlink, fs.rename, fs.stable_inode, fs.mtime_step_ns) == (True, True, True, True, 1)
    assert (sorted(os.listdir(tmp_path)), os.stat(tmp_path).st_mtime_ns) == before
    # a probe killed mid-way: its scratch folder (a dead pid of this host) is skipped, then swept
    import socket
    dead = tmp_path / "loras" / f"{PROBE_PREFIX}{socket.gethostname()}-999999999-abcdef"
    dead.mkdir()
    (dead / "a").write_bytes(b"probe")
    assert [r.rel for r in scan_tree(str(tmp_path)).records] == ["loras/a.pt"]
    fsops.sweep_probes(str(tmp_path / "loras"))
    assert not dead.exists()


# --- the lock: O_EXCL, never link(2); a kill at any point leaves at most a stale lock ------------------

def test_the_lock_needs_no_hardlinks_and_takes_over_an_empty_old_lock_and_a_zombie_holder(tmp_path, monkeypatch):
    import errno
    import json
    import os
    import socket
    import time

    import pytest

    from migrate.disk import lock as lockmod
    from migrate.core.errors import Locked

    def no_links(*a, **k):
        raise OSError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(os, "link", no_links)           # exFAT, rclone mount
    held = lockmod.TargetLock(str(tmp_path), "comfy-migrate run").acquire()
    assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
    held.release()
    assert not (tmp_path / "lock").exists()

    # killed between creating the lock and writing it: an empty lock, stale once past the grace
    (tmp_path / "lock").write_bytes(b"")
    with pytest.raises(Locked):
        lockmod.TargetLock(str(tmp_path), "run").acquire(wait=0)
    old = time.time() - lockmod.EMPTY_GRACE_SECONDS - 5
    os.utime(tmp_path / "lock", (old, old))
    taken = lockmod.TargetLock(str(tmp_path), "run").acquire(wait=0)
    assert "empty" in taken.took_over["reason"]
    taken.release()

    # a holder killed and not yet reaped (a zombie) is gone; so is a pid reused by another process
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    time.sleep(0.2)
    holder = {"host": socket.gethostname(), "boot_id": lockmod.boot_id(), "pidns": lockmod.pid_namespace(), "pid": pid, "token": "x"}
    (tmp_path / "lock").write_text(json.dumps(holder))
    taken = lockmod.TargetLock(str(tmp_path), "run").acquire(wait=0)
    assert taken.took_over["reason"] == f"process {pid} is gone"
    taken.release()
    os.waitpid(pid, 0)
    (tmp_path / "lock").write_text(json.dumps(dict(holder, pid=os.getpid(), pid_start=1)))
    taken = lockmod.TargetLock(str(tmp_path), "run").acquire(wait=0)
    assert taken.took_over is not None
    taken.release()


def test_an_oserror_on_a_descriptor_names_its_path_and_operation(tmp_path, monkeypatch):
    """A dropped mount fails writes with ENOTCONN on a descriptor: the message says what and where."""
    import errno
    import os

    import pytest

    from migrate.disk import fsops
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 1000)
    st = os.stat(src)

    def gone(fd, data):
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
    monkeypatch.setattr(fsops, "write_all", gone)
    tmp = str(tmp_path / ".a.bin.cm-tmp-x")
    with pytest.raises(OSError) as info:
        fsops.copy_and_hash(str(src), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), tmp)
    assert fsops.describe(info.value) == f"write {tmp}: Transport endpoint is not connected"
    assert not os.path.exists(tmp)


def test_a_probe_of_another_container_with_our_host_name_is_not_swept_by_its_pid(tmp_path):
    """Two containers with one host name probe one store: the other's pid means nothing here (its
    PID namespace is not ours), so its live scratch folder is left alone; ours, of a dead pid, goes."""
    from migrate.disk import fsops
    from migrate.core.model import PROBE_PREFIX
    owner = fsops.probe_owner()
    host, ns = owner.rsplit("-", 1)[0], owner.rsplit("n", 1)[1]
    assert ns, "no PID namespace number here"
    theirs = tmp_path / f"{PROBE_PREFIX}{host}-999999999n{int(ns) + 1}-abcdef"
    mine = tmp_path / f"{PROBE_PREFIX}{host}-999999999n{ns}-abcdef"
    theirs.mkdir()
    mine.mkdir()
    fsops.sweep_probes(str(tmp_path))
    assert theirs.exists() and not mine.exists()
