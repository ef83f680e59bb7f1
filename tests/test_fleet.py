"""Fleet use (issue 7): several pods migrate into one shared store at once.

Real processes: each "pod" is its own ComfyUI folder with its own YAML, HOME and digest cache
(another machine), and they share one target. They are started together (a barrier file) and race
for the lock. Then: no process failed, no content lost, no content stored twice, every run's log
closed and intact, each pod's YAML resolves all its models in the store under ComfyUI's rules,
and the store's catalogue equals a fresh hash of the store.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import xxhash
from conftest import as_model, run_cli

from migrate.disk import catalogue as store_catalogue
from migrate.core import comfy
from migrate.disk.journal import read_log
from migrate.core.model import STATE_DIR
from migrate.disk.runlog import check_log

Models = Dict[str, bytes]      # rel under models/ -> content


def blob(seed: str, size: int) -> bytes:
    block = xxhash.xxh3_128(seed.encode()).digest() * 64          # 1 KiB, distinct per seed
    return (block * (size // len(block) + 1))[:size]


def digest(data: bytes) -> str:
    return xxhash.xxh3_128(data).hexdigest()


def models_of(raw: Models) -> Models:
    """Payloads inside valid model files (the audit would hold back anything else)."""
    return {rel: as_model(rel, data) for rel, data in raw.items()}


def pod_models(i: int) -> Models:
    """Overlapping content: the same file at the same path in every pod, the same content under
    other names, a pair shared by two pods, and files only this pod has."""
    return models_of({
        "checkpoints/common.safetensors": blob("common", 96 << 10),
        f"loras/alias_{i}.safetensors": blob("alias", 40 << 10),          # same bytes, other names
        f"vae/pair_{i // 2}.safetensors": blob(f"pair{i // 2}", 24 << 10),  # pods 0+1, 2+3 share
        f"controlnet/only_{i}.safetensors": blob(f"only{i}", (32 << 10) + i),
        f"upscale_models/x{i}/deep_{i}.pth": blob(f"deep{i}", 8 << 10),
        "embeddings/shared.pt": blob("emb", 4 << 10),
    })


def make_pod(root: Path, models: Models) -> Tuple[Path, Dict[str, str]]:
    comfyui = root / "ComfyUI"
    for rel, data in models.items():
        p = comfyui / "models" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (comfyui / "extra_model_paths.yaml").write_text("# my own settings\nother:\n  base_path: /nowhere\n")
    env_dirs = root / "state"
    env = {"HOME": str(env_dirs / "home"), "XDG_CACHE_HOME": str(env_dirs / "cache"),
           "COMFY_MIGRATE_CACHE": str(env_dirs / "cache" / "digests.sqlite")}
    for v in ("HOME", "XDG_CACHE_HOME"):
        Path(env[v]).mkdir(parents=True, exist_ok=True)
    return comfyui, env


def on_host(host: str) -> List[str]:
    """A command prefix running python as if on another machine: its own hostname (a UTS namespace)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-u", "true"]).returncode != 0:
        pytest.skip("no `unshare -u` here to give each pod its own host name")
    return ["unshare", "-u", sys.executable, "-c",
            f"import os, socket, sys; socket.sethostname({host!r}); os.execv(sys.executable, [sys.executable] + sys.argv[1:])"]


def start_together(cmds: List[Tuple[List[str], Dict[str, str]]], tmp_path: Path,
                   hosts: Optional[List[str]] = None) -> List[Tuple[int, str, str]]:
    """Run every command at once and return (exit code, stdout, stderr) of each.

    They all start behind a barrier file while this test holds the target's lock, so each plans
    and then waits for the lock (not a matter of timing: we wait until each says so); then the
    lock is released and they stampede for it.
    """
    from migrate.disk.lock import TargetLock
    target = Path(cmds[0][0][cmds[0][0].index("--target") + 1])
    gate = TargetLock(str(target / STATE_DIR), "the test's gate").acquire()
    barrier = tmp_path / "barrier"
    procs, errs, outs = [], [], []
    try:
        for i, (args, env) in enumerate(cmds):
            code = ("import os, sys, time\n"
                    f"while not os.path.exists({str(barrier)!r}): time.sleep(0.002)\n"
                    "os.execv(sys.executable, [sys.executable, '-m', 'migrate'] + sys.argv[1:])\n")
            prefix = on_host(hosts[i]) if hosts else [sys.executable]
            outs.append(tmp_path / f"out{i}")
            errs.append(tmp_path / f"err{i}")
            with open(outs[-1], "w") as o, open(errs[-1], "w") as e:
                procs.append(subprocess.Popen([*prefix, "-c", code, *args], env=env, stdin=subprocess.DEVNULL,
                                              stdout=o, stderr=e))
        barrier.write_text("go")
        deadline = time.monotonic() + 90
        while not all(p.poll() is not None or "waiting for the target's lock" in e.read_text()
                      for p, e in zip(procs, errs)):
            assert time.monotonic() < deadline, [e.read_text() for e in errs]
            time.sleep(0.02)
    finally:
        gate.release()
    codes = [p.wait(120) for p in procs]
    return [(c, o.read_text(), e.read_text()) for c, o, e in zip(codes, outs, errs)]


def store_files(target: Path) -> Dict[str, os.stat_result]:
    out = {}
    for dirpath, dirs, files in os.walk(target):
        if Path(dirpath) == target and STATE_DIR in dirs:
            dirs.remove(STATE_DIR)
        for f in files:
            p = Path(dirpath, f)
            st = p.lstat()
            if stat.S_ISREG(st.st_mode):
                out[str(p.relative_to(target))] = st
    return out


def resolve(comfyui: Path, category: str, name: str) -> Path:
    """The file ComfyUI loads for (category, name) given the pod's YAML."""
    yaml = comfyui / "extra_model_paths.yaml"
    order = comfy.search_folders([(str(yaml), yaml.read_text())], str(comfyui / "models"), env={})
    for folder in order.get(category, []):
        p = Path(folder, name)
        if p.is_file():
            return p
    raise AssertionError(f"{category}/{name} not found by {comfyui}")


def check_fleet(target: Path, pods: List[Tuple[Path, Models]], runs_expected: int) -> None:
    files = store_files(target)
    # No loss: every source model's content is in the store and each pod's YAML finds it there first.
    contents = {rel: digest(Path(target, rel).read_bytes()) for rel in files}
    for comfyui, models in pods:
        for rel, data in models.items():
            folder, name = rel.split("/", 1)
            found = resolve(comfyui, comfy.category_of(folder)[0], name)
            assert os.path.realpath(found).startswith(os.path.realpath(target) + "/"), \
                f"{comfyui}: {rel} resolves outside the store: {found}"
            assert found.read_bytes() == data, f"{comfyui}: {rel} resolves to other content"
    # No duplicate content: distinct inodes hold distinct content (hardlinks are the dedupe).
    by_inode = {(st.st_dev, st.st_ino): contents[rel] for rel, st in files.items()}
    assert len(set(by_inode.values())) == len(by_inode), "the same content is stored twice"
    # Every run's log is complete: closed, chain intact, paths inside its folders.
    logs = sorted(p for p in (target / STATE_DIR / "runs").glob("*.jsonl") if not p.name.endswith(".rollback.jsonl"))
    assert len(logs) == runs_expected, [p.name for p in logs]
    for log in logs:
        records, _, torn = read_log(str(log))
        check_log(records, str(log))
        assert records[-1]["type"] == "close" and records[-1]["state"] == "complete", (log, records[-1])
    # The catalogue equals a fresh hash of the store.
    cat, warning = store_catalogue.load(str(target))
    assert warning == ""
    assert {rel: (e.digest, e.ino, e.size, e.mtime_ns) for rel, e in cat.items()} == {
        rel: (contents[rel], st.st_ino, st.st_size, st.st_mtime_ns) for rel, st in files.items()}
    assert not (target / STATE_DIR / "lock").exists()


def concurrent_pods(tmp_path: Path, cli_env, n: int, crash: Dict[int, int] = {}, hosts: bool = False,
                    mounts: bool = False):
    """n pods into one store; with `mounts`, each sees the volume at its own path (a symlink),
    as pods mounting it at /workspace or /runpod-volume do."""
    target = tmp_path / "volume" / "models"
    target.parent.mkdir(parents=True, exist_ok=True)     # the volume is mounted (run makes only the target)
    target.mkdir(parents=True)
    pods, cmds = [], []
    for i in range(n):
        where = target
        if mounts:
            where = tmp_path / f"mount{i}"
            where.symlink_to(target.parent)
            where = where / "models"
        models = pod_models(i)
        comfyui, env = make_pod(tmp_path / f"pod{i}", models)
        env = dict(cli_env, **env)
        if i in crash:
            env["COMFY_MIGRATE_CRASH_AT"] = str(crash[i])
        pods.append((comfyui, models, env, where))
        cmds.append((["run", "--comfyui", str(comfyui), "--target", str(where), "--yes", "--wait", "60"], env))
    results = start_together(cmds, tmp_path, [f"pod-{i}" for i in range(n)] if hosts else None)
    return target, pods, results


@pytest.mark.parametrize("n", [2, 4])
def test_concurrent_pods_into_one_store(tmp_path, cli_env, n):
    target, pods, results = concurrent_pods(tmp_path, cli_env, n, hosts=True)
    for code, out, err in results:
        assert code == 0, f"exit {code}\n{out}\n{err}"
    assert all("waiting for the target's lock: the test's gate" in err for _, _, err in results)
    check_fleet(target, [(c, m) for c, m, _, _ in pods], n)
    hosts = {read_log(str(p))[0][0]["host"] for p in (target / STATE_DIR / "runs").glob("*.jsonl")}
    assert hosts == {f"pod-{i}" for i in range(n)}
    # Each pod's sources were removed (moved into the store, or set aside when already stored).
    for comfyui, models, _, _ in pods:
        left = [rel for rel in models if (comfyui / "models" / rel).exists()]
        assert left == [], left


def test_rollback_of_one_pod_keeps_what_others_rely_on(tmp_path, cli_env):
    # Each pod has its own host name and mounts the volume at its own path.
    target, pods, results = concurrent_pods(tmp_path, cli_env, 4, hosts=True, mounts=True)
    assert all(code == 0 for code, _, _ in results), results
    # The run that placed checkpoints/common.safetensors: the others found it "already there"
    # and set their own copy aside, so they rely on the stored file.
    common = "checkpoints/common.safetensors"
    placer = None
    for log in (target / STATE_DIR / "runs").glob("*.jsonl"):
        records = read_log(str(log))[0]
        if any(r.get("op") in ("link", "rename", "copy") and r.get("dst", "").endswith("/" + common) for r in records):
            placer = records[0]
    assert placer is not None
    (comfyui_a, models_a, env_a, mount_a), = [p for p in pods if str(p[0] / "models") in placer["sources"]]
    assert placer["target"] == str(mount_a)
    # A bare `rollback` (no ComfyUI folder) finds runs as `verify` does (issue 21: a redeploy changes
    # the host name): by the YAML, else by sources all on this machine, never by the host name. Here
    # every pod's sources are on this one machine, so it names the newest of them; with --comfyui,
    # the pod's own (its YAML).
    newest = max(p.name[:-len(".jsonl")] for p in (target / STATE_DIR / "runs").glob("*.jsonl")
                 if not p.name.endswith(".rollback.jsonl"))
    proc = run_cli(["rollback", "--target", mount_a, "--dry-run"], env_a)
    assert f"rollback of run {newest}" in proc.stdout
    proc = run_cli(["rollback", "--comfyui", comfyui_a, "--target", mount_a, "--dry-run"], env_a)
    assert f"rollback of run {placer['run']}" in proc.stdout
    before = {k: v for k, v in store_files(target).items()}
    proc = run_cli(["rollback", placer["run"], "--target", mount_a, "--dry-run"], env_a)
    assert "common.safetensors (a hardlink of" in proc.stdout and "kept in the store instead" in proc.stdout
    assert store_files(target).keys() == before.keys()
    proc = run_cli(["rollback", placer["run"], "--target", mount_a, "--yes"], env_a)
    # The rolled-back pod has every model back in its own folder and its old YAML.
    for rel, data in models_a.items():
        assert (comfyui_a / "models" / rel).read_bytes() == data, rel
    assert "comfy_migrate" not in (comfyui_a / "extra_model_paths.yaml").read_text()
    # The other pods still find every model in the store (nothing they rely on was removed).
    for comfyui, models, _, _ in pods:
        if comfyui == comfyui_a:
            continue
        for rel, data in models.items():
            folder, name = rel.split("/", 1)
            found = resolve(comfyui, comfy.category_of(folder)[0], name)
            assert os.path.realpath(found).startswith(str(target) + "/") and found.read_bytes() == data, (comfyui, rel)
    assert "kept in the store" in proc.stdout and "common.safetensors" in proc.stdout
    cat, _ = store_catalogue.load(str(target))
    files = store_files(target)
    assert {r: e.digest for r, e in cat.items()} == {r: digest(Path(target, r).read_bytes()) for r in files}
    # The rollback's log records the kept file and for whom.
    rb = read_log(str(target / STATE_DIR / "runs" / f"{placer['run']}.rollback.jsonl"))[0]
    kept = [r for r in rb if r.get("type") == "keep"]
    assert any(r["rel"] == common and len(r["for"]) == 3 for r in kept), kept
    # Roll back the other pods too (each where it mounts the volume): the last one to rely on a
    # kept file takes it out of the store. Every pod has its models back; the store holds no model.
    for comfyui, models, env, mount in pods:
        if comfyui == comfyui_a:
            continue
        head = [read_log(str(p))[0][0] for p in (target / STATE_DIR / "runs").glob("*.jsonl")
                if not p.name.endswith(".rollback.jsonl") and str(comfyui / "models") in read_log(str(p))[0][0]["sources"]]
        run_cli(["rollback", head[0]["run"], "--target", mount, "--yes"], env)
        for rel, data in models.items():
            assert (comfyui / "models" / rel).read_bytes() == data, (comfyui, rel)
    assert store_files(target) == {}
    assert store_catalogue.load(str(target))[0] == {}
    # ...and no folder either: the last rollback removes the (now empty) folders the others could not
    left = [d for d, _, _ in os.walk(target) if STATE_DIR not in d.split(os.sep) and d != str(target)]
    assert left == [], left


def test_sigkill_of_one_pod_while_others_run(tmp_path, cli_env):
    # Pod 0 kills itself (SIGKILL) right after its 4th log record, holding the lock.
    target, pods, results = concurrent_pods(tmp_path, cli_env, 3, crash={0: 4})
    assert results[0][0] == -signal.SIGKILL, results[0]
    for code, out, err in results[1:]:
        assert code == 0, f"exit {code}\n{out}\n{err}"
    # Pod 0 runs again: it continues its own interrupted run.
    comfyui0, _, env0, _ = pods[0]
    env0 = {k: v for k, v in env0.items() if k != "COMFY_MIGRATE_CRASH_AT"}
    proc = run_cli(["run", "--comfyui", comfyui0, "--target", target, "--yes"], env0)
    assert "(continued)" in proc.stdout
    took_over = [err for _, _, err in results[1:]] + [proc.stderr]
    assert sum("took over a stale lock" in e for e in took_over) == 1, took_over
    check_fleet(target, [(c, m) for c, m, _, _ in pods], 3)


@pytest.mark.slow
def test_lock_wait_names_the_holder_then_gives_up_or_proceeds(tmp_path, cli_env):
    from migrate.disk.lock import boot_id, pid_namespace
    import socket
    comfyui, env = make_pod(tmp_path / "pod", pod_models(0))
    env = dict(cli_env, **env)
    target = tmp_path / "models"
    sd = target / STATE_DIR
    sd.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (sd / "lock").write_text(json.dumps({"host": socket.gethostname(), "boot_id": boot_id(), "pidns": pid_namespace(),
                                             "pid": sleeper.pid, "started": "2026-01-01T00:00:00Z",
                                             "purpose": "comfy-migrate run"}))
        t0 = time.monotonic()
        proc = run_cli(["run", "--comfyui", comfyui, "--target", target, "--yes", "--wait", "1"], env, check=5)
        assert time.monotonic() - t0 >= 1
        assert f"pid {sleeper.pid}" in proc.stderr and "since 2026-01-01T00:00:00Z" in proc.stderr
        assert "waiting for the target's lock" in proc.stderr
        assert not list(target.glob("checkpoints/*"))
        # The holder finishes while we wait: the run proceeds.
        p = subprocess.Popen([sys.executable, "-m", "migrate", "run", "--comfyui", str(comfyui), "--target",
                              str(target), "--yes", "--wait", "30"], env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Unlock once it says it waits (a fixed sleep raced the run's start under load: flaky).
        head = []
        while True:
            line = p.stderr.readline()
            head.append(line)
            if not line or "waiting for the target's lock" in line:
                break
        assert "waiting for the target's lock" in "".join(head), "".join(head)
        (sd / "lock").unlink()
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, "".join(head) + err
    finally:
        sleeper.kill()
        sleeper.wait()


_PLACED_AFTER_SCAN = """
import os, shutil, sys
import migrate.disk.facts as facts
real = facts.gather
src, dst = sys.argv[1], sys.argv[2]
def gather(*a, **kw):
    out = real(*a, **kw)
    if not os.path.exists(dst):        # another pod's run places the same model, once
        shutil.copy2(src, dst + ".tmp")
        os.rename(dst + ".tmp", dst)
    return out
facts.gather = gather
from migrate.cli import main
sys.argv = ["comfy-migrate", *sys.argv[3:]]
main()
"""


@pytest.mark.slow
def test_a_file_another_pod_places_after_the_scan_makes_run_wait_and_plan_again(tmp_path, cli_env):
    # torture fleet-0040: pod 1 placed checkpoints/common between pod 0's scan of the store and
    # its preflight (before the lock): pod 0 refused (exit 3, "already exists in the store"). Now it
    # waits for the run holding the lock, plans again and finds the file already there.
    from migrate.disk.lock import boot_id, pid_namespace
    import socket
    comfyui, env = make_pod(tmp_path / "pod", pod_models(0))
    env = dict(cli_env, **env)
    target = tmp_path / "models"
    (target / "checkpoints").mkdir(parents=True)
    sd = target / STATE_DIR
    sd.mkdir()
    rel = "checkpoints/common.safetensors"
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (sd / "lock").write_text(json.dumps({"host": socket.gethostname(), "boot_id": boot_id(), "pidns": pid_namespace(),
                                             "pid": sleeper.pid, "started": "2026-01-01T00:00:00Z",
                                             "purpose": "comfy-migrate run"}))
        p = subprocess.Popen([sys.executable, "-c", _PLACED_AFTER_SCAN, str(comfyui / "models" / rel),
                              str(target / rel), "run", "--comfyui", str(comfyui), "--target", str(target),
                              "--yes", "--wait", "30"], env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=env["HOME"])
        time.sleep(1.5)
        (sd / "lock").unlink()           # the other pod's run is done
        out, err = p.communicate(timeout=60)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert p.returncode == 0, err
    assert "already exists" not in err and "waiting for the target's lock" in err
    assert (target / rel).read_bytes() == pod_models(0)[rel]
    assert not (comfyui / "models" / rel).exists()        # already there: the pod's name is set aside
    run_cli(["rollback", "--target", target, "--yes"], env)
    assert (comfyui / "models" / rel).read_bytes() == pod_models(0)[rel]


def test_second_pod_plan_reads_no_stored_file_known_to_the_catalogue(tmp_path, cli_env):
    """A warm re-plan from another machine: the catalogue spares reading the store."""
    target = tmp_path / "models"
    models = models_of({f"loras/l{i:03d}.safetensors": blob(f"l{i}", 4096 + i) for i in range(60)})
    c1, e1 = make_pod(tmp_path / "pod1", models)
    run_cli(["run", "--comfyui", c1, "--target", target, "--yes"], dict(cli_env, **e1))
    c2, e2 = make_pod(tmp_path / "pod2", models)          # the same models: sizes meet everywhere
    env2 = dict(cli_env, **e2)

    def plan_reads() -> Tuple[int, int, int]:
        err = run_cli(["-v", "plan", "--comfyui", c2, "--target", target, "--no-cache"], env2).stderr
        line = next(l for l in err.splitlines() if l.startswith("store: "))
        nums = [int(w) for w in line.replace("(", " ").split() if w.isdigit()]
        return nums[1], nums[3], nums[4]      # from the catalogue, files read, bytes read

    assert plan_reads() == (60, 0, 0)
    (target / STATE_DIR / store_catalogue.NAME).write_text('{"catalogue": 99}\n')    # a foreign version
    hits, files, size = plan_reads()
    assert (hits, files, size) == (0, 60, sum(map(len, models.values())))


def test_catalogue_damaged_or_foreign_reads_as_empty():
    cat = {"a/b": store_catalogue.Entry("a/b", 3, 4, 5, "d" * 32, "r1", 2 ** 63 + 6)}
    data = store_catalogue.render(cat)
    assert store_catalogue.parse(data) == (cat, "")
    assert store_catalogue.parse(None) == ({}, "")
    for bad in (data[:-10], b"\xff\xfe", b'{"catalogue": 2, "entries": 0}\n', data.replace(b'"entries": 1', b'"entries": 2')):
        got, warning = store_catalogue.parse(bad)
        assert got == {} and warning, bad


def test_reconcile_trusts_only_matching_identity():
    old = {"x": store_catalogue.Entry("x", 10, 100, 7, "dx", "r0", 50),
           "y": store_catalogue.Entry("y", 10, 100, 8, "dy", "r0", 50),
           "w": store_catalogue.Entry("w", 10, 100, 11, "dw", "r0", 50),
           "v": store_catalogue.Entry("v", 10, 100, 12, "dv", "r0")}
    walked = [("x", (7, 10, 100), 50),            # unchanged: kept with its run
              ("y", (8, 10, 101), 50),            # touched since: dropped (unknown until hashed)
              ("z", (7, 10, 100), 50),            # a hardlink of x: same inode, size and mtime
              ("w", (11, 10, 100), 51),           # rewritten in place, mtime put back: ctime moved
              ("v", (12, 10, 100), 50),           # an entry of the old format (no ctime): never trusted
              ("n", (9, 5, 1), 50)]               # placed by this run
    cat = store_catalogue.reconcile(walked, {("n", 5, 1): ("dn", "r1")}, {}, old)
    assert {k: (e.digest, e.run) for k, e in cat.items()} == {"x": ("dx", "r0"), "z": ("dx", None), "n": ("dn", "r1")}
    assert cat["n"].ctime_ns == 50 and store_catalogue.lookup(cat, "x", (7, 10, 100), 50) == "dx"
    assert store_catalogue.lookup(cat, "x", (7, 10, 100), 51) is None


# --- the question, asked before the lock; asked again only when the store changed what matters ----

def _read_until(fd: int, text: str, timeout: float = 60) -> str:
    import select
    buf = b""
    end = time.monotonic() + timeout
    while text.encode() not in buf:
        left = end - time.monotonic()
        assert left > 0, f"timed out waiting for {text!r}; got:\n{buf.decode(errors='replace')}"
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf.decode(errors="replace")


def _interactive_run(comfyui: Path, target: Path, env: Dict[str, str]):
    import pty
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "migrate", "run", "--comfyui", str(comfyui), "--target", str(target)],
                         env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    return p, master


@pytest.mark.parametrize("other", ["same", "different"])
def test_question_is_asked_again_only_if_another_pod_changed_the_outcome(tmp_path, cli_env, other):
    models_a = models_of({"checkpoints/common.safetensors": blob("common", 64 << 10),
                          "vae/a.safetensors": blob("a", 8 << 10)})
    models_b = models_of({"checkpoints/common.safetensors": blob("common" if other == "same" else "other", 64 << 10)})
    ca, ea = make_pod(tmp_path / "a", models_a)
    cb, eb = make_pod(tmp_path / "b", models_b)
    target = tmp_path / "models"
    yaml_a = (ca / "extra_model_paths.yaml").read_bytes()
    p, master = _interactive_run(ca, target, dict(cli_env, **ea))
    try:
        _read_until(master, "Migrate into")
        # While pod A's user reads the plan (no lock held), pod B migrates.
        run_cli(["run", "--comfyui", cb, "--target", target, "--yes", "--wait", "0"], dict(cli_env, **eb))
        os.write(master, b"y\n")
        if other == "same":
            out = _read_until(master, "undo with:")
            assert "already-there" in out and "new plan" not in out
            assert p.wait(60) == 0
            assert not (ca / "models" / "checkpoints" / "common.safetensors").exists()
        else:
            out = _read_until(master, "with this new plan?")
            assert "common.safetensors: was move" in out and "now conflict" in out
            os.write(master, b"n\n")
            assert p.wait(60) == 7
            # Nothing of pod A changed; the lock is free.
            for rel, data in models_a.items():
                assert (ca / "models" / rel).read_bytes() == data
            assert (ca / "extra_model_paths.yaml").read_bytes() == yaml_a
            assert not (target / STATE_DIR / "lock").exists()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)


def test_plan_changes_tells_what_matters():
    from migrate.core.fleet import plan_changes
    from migrate.core.model import Action, ActionKind, Method, Plan, Policy
    def plan(*actions, yaml="y"):
        return Plan("/t", ("/s",), "/c/e.yaml", yaml, None, Policy(), tuple(actions), (), True, ())
    move = Action(ActionKind.MOVE, "/s", "loras/a", "loras", 5, "d1", "/t/loras/a", Method.HARDLINK)
    there = Action(ActionKind.ALREADY_THERE, "/s", "loras/a", "loras", 5, "d1", "/t/loras/a")
    conflict = Action(ActionKind.CONFLICT, "/s", "loras/a", "loras", 5, "d1", "/t/loras/a", reason="differs")
    renamed = Action(ActionKind.MOVE, "/s", "loras/a", "loras", 5, "d1", "/t/loras/a.conflict-1", Method.HARDLINK)
    assert plan_changes(plan(move), plan(move)) == ([], [])
    matters, notes = plan_changes(plan(move), plan(there))
    assert matters == [] and notes[0].startswith("1 file(s) move -> already-there")
    assert plan_changes(plan(move), plan(conflict))[0] == ["/s/loras/a: was move to /t/loras/a, now conflict: differs"]
    assert plan_changes(plan(move), plan(renamed))[0]          # another name: a workflow would not find it
    assert plan_changes(plan(move), plan())[0] == ["/s/loras/a: gone from the source"]
    assert plan_changes(plan(move), plan(move, yaml="z"))[0] == ["/c/e.yaml: edited since the plan"]


def test_lock_excludes_racing_processes_and_one_takes_over_a_stale_lock(tmp_path):
    """Six processes race for a lock left by a dead process, each holding it briefly three times:
    no two ever hold it at once, and the stale lock is taken over exactly once."""
    from migrate.disk.lock import boot_id, pid_namespace
    import socket
    sd = tmp_path / "state"
    sd.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (sd / "lock").write_text(json.dumps({"host": socket.gethostname(), "boot_id": boot_id(), "pidns": pid_namespace(), "pid": dead.pid,
                                         "started": "x", "purpose": "dead"}))
    trace = tmp_path / "trace"
    code = ("import os, sys, time\n"
            "from migrate.disk.lock import TargetLock\n"
            f"while not os.path.exists({str(tmp_path / 'go')!r}): time.sleep(0.001)\n"
            "for _ in range(3):\n"
            f"    lock = TargetLock({str(sd)!r}, 'test').acquire(60)\n"
            f"    with open({str(trace)!r}, 'a') as f: f.write(f'in {{os.getpid()}}\\n')\n"
            "    time.sleep(0.01)\n"
            f"    with open({str(trace)!r}, 'a') as f: f.write(f'out {{os.getpid()}} {{bool(lock.took_over)}}\\n')\n"
            "    lock.release()\n")
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(6)]
    time.sleep(0.3)
    (tmp_path / "go").write_text("")
    assert [p.wait(120) for p in procs] == [0] * 6
    lines = trace.read_text().split("\n")[:-1]
    assert len(lines) == 36
    for i in range(0, 36, 2):
        assert lines[i].startswith("in ") and lines[i + 1].startswith(f"out {lines[i][3:]} "), lines[i:i + 2]
    assert sum(l.endswith("True") for l in lines) == 1
    assert not (sd / "lock").exists() and not list(sd.glob("lock.*"))


def test_reliance_from_logs():
    from migrate.core.fleet import reliance, relied_paths
    b = [{"type": "header", "run": "B", "target": "/t"},
         # already there: its source set aside, trusting A's stored copy
         {"type": "begin", "step": 2, "op": "quarantine", "src": "/b/m/loras/x", "dst": "/t/loras/x", "stored": "/t/loras/x"},
         {"type": "done", "step": 2},
         # same content, own hardlink: its name keeps the content
         {"type": "begin", "step": 4, "op": "dedupe", "dst": "/t/loras/y", "stored": "/t/loras/x"},
         {"type": "done", "step": 4},
         {"type": "begin", "step": 6, "op": "quarantine", "src": "/b/m/loras/y", "dst": "/t/loras/y", "stored": "/t/loras/x"},
         # same content where hardlinks are refused: a symlink to the stored copy
         {"type": "begin", "step": 8, "op": "symlink", "dst": "/t/vae/z", "to": "../loras/w"},
         # its own placement, then its own source removed: not reliance on another run
         {"type": "begin", "step": 10, "op": "link", "src": "/b/m/vae/v", "dst": "/t/vae/v"},
         {"type": "begin", "step": 12, "op": "unlink", "src": "/b/m/vae/v", "dst": "/t/vae/v", "stored": "/t/vae/v"}]
    assert relied_paths(b) == {"/t/loras/x", "/t/loras/w", "/t/vae/v"}
    assert reliance([("A", []), ("B", b)], "A") == {"loras/x": ["B"], "loras/w": ["B"]}
    # Pod C mounts the volume elsewhere: the same stored file, by its place in the store.
    c = [dict(r, **{k: r[k].replace("/t/", "/mnt/t/") for k in ("dst", "stored") if k in r}) for r in b]
    c[0] = {"type": "header", "run": "C", "target": "/mnt/t"}
    assert reliance([("B", b), ("C", c)], "A") == {"loras/x": ["B", "C"], "loras/w": ["B", "C"]}
    assert reliance([("B", b)], "B") == {}
    # A link step logged as failed put nothing there: the run's removal trusting that name is reliance.
    from migrate.core.fleet import placed_by
    d = [{"type": "header", "run": "D", "target": "/t"},
         {"type": "begin", "step": 2, "op": "link", "src": "/d/m/vae/v", "dst": "/t/vae/v"},
         {"type": "fail", "step": 2, "error": "File exists"},
         {"type": "begin", "step": 4, "op": "quarantine", "src": "/d/m/vae/v", "dst": "/t/vae/v", "stored": "/t/vae/v"}]
    assert placed_by(d) == set() and reliance([("D", d)], "A") == {"vae/v": ["D"]}
    # Nor did one begun but never made (no fail record: the pod was killed; rollback.settle marks it).
    e = [d[0], d[1], {"type": "unplaced", "step": 2}, d[3]]
    assert placed_by(e) == set() and reliance([("E", e)], "A") == {"vae/v": ["E"]}
    assert placed_by([d[0], d[1], d[3]]) == {"/t/vae/v"}


def test_another_hosts_run_is_not_rolled_back_where_its_sources_are_missing(tmp_path, cli_env):
    comfyui, env = make_pod(tmp_path / "pod", pod_models(1))
    env = dict(cli_env, **env)
    target = tmp_path / "models"
    p = subprocess.run([*on_host("pod-far"), "-m", "migrate", "run", "--comfyui", str(comfyui), "--target",
                        str(target), "--yes"], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    run_id = read_log(str(next((target / STATE_DIR / "runs").glob("*.jsonl"))))[0][0]["run"]
    (comfyui / "models").rename(tmp_path / "elsewhere")          # as seen from another pod
    before = {r: st.st_ino for r, st in store_files(target).items()}
    proc = run_cli(["rollback", run_id, "--target", target, "--yes"], env, check=3)
    assert "was made on host pod-far" in proc.stderr
    assert {r: st.st_ino for r, st in store_files(target).items()} == before
    assert not (comfyui / "models").exists()


def test_run_ids_sort_in_start_order_within_a_second():
    from migrate.app.execute import new_run_id
    ids = []
    for _ in range(5):
        ids.append(new_run_id())
        time.sleep(0.002)
    assert ids == sorted(ids) and len(set(ids)) == 5


def test_verify_and_purge_default_to_this_hosts_newest_run(tmp_path, cli_env):
    """Like a bare `rollback`: another pod's newer run is not what `verify`/`purge` pick here."""
    target = tmp_path / "models"
    mine = models_of({"checkpoints/a.safetensors": blob("a", 8 << 10)})
    (target / "checkpoints").mkdir(parents=True)
    (target / "checkpoints/a.safetensors").write_bytes(mine["checkpoints/a.safetensors"])   # already stored
    ca, ea = make_pod(tmp_path / "a", mine)
    ea = dict(cli_env, **ea)
    run_cli(["run", "--comfyui", ca, "--target", target, "--yes"], ea)
    cb, eb = make_pod(tmp_path / "b", models_of({"vae/b.safetensors": blob("b", 8 << 10)}))
    p = subprocess.run([*on_host("pod-other"), "-m", "migrate", "run", "--comfyui", str(cb), "--target",
                        str(target), "--yes"], env=dict(cli_env, **eb), capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    heads = {read_log(str(g))[0][0]["host"] != "pod-other": read_log(str(g))[0][0]["run"]
             for g in (target / STATE_DIR / "runs").glob("*.jsonl")}
    run_a, run_b = heads[True], heads[False]
    assert run_b > run_a                                          # the other pod's run is the newest
    # Each pod's YAML lists every category of its ComfyUI (issue 21): the other pod's folder is one
    # of them, no orphan; never a failure.
    out_a = run_cli(["verify", "--comfyui", ca, "--target", target], ea).stdout
    assert f"run {run_a}:" in out_a and "this pod's YAML does not list" not in out_a and "all good" in out_a
    assert f"run {run_b}:" in run_cli(["verify", run_b, "--comfyui", cb, "--target", target], ea).stdout
    quarantine = ca / "models" / STATE_DIR / "quarantine" / run_a
    assert [p for p in quarantine.rglob("*") if p.is_file()]      # the source copy set aside
    assert "is empty" in run_cli(["purge", run_b, "--target", target, "--permanent", "--yes"], ea).stdout
    run_cli(["purge", "--target", target, "--permanent", "--yes"], ea)
    assert not [p for p in quarantine.rglob("*") if p.is_file()]


def test_heartbeat_touches_only_its_own_lock(tmp_path, monkeypatch):
    """After a take-over (our lease expired), our heartbeat must not keep the new holder's lock fresh."""
    from migrate.disk import lock
    monkeypatch.setattr(lock, "HEARTBEAT_SECONDS", 0.02)
    held = lock.TargetLock(str(tmp_path / STATE_DIR), "test").acquire()
    path = tmp_path / STATE_DIR / "lock"
    try:
        os.utime(path, (1000, 1000))
        time.sleep(0.3)
        assert path.stat().st_mtime > 1000                    # ours: refreshed
        info = dict(json.loads(path.read_text()), token="someone-else", pid=1)
        (tmp_path / "new").write_text(json.dumps(info))
        os.utime(tmp_path / "new", (1000, 1000))
        os.rename(tmp_path / "new", path)                     # taken over
        time.sleep(0.3)
        assert path.stat().st_mtime == 1000                   # theirs: left alone
    finally:
        held.release()
    assert path.exists()                                      # and not removed by our release


def _cli_on(host: str, args: List, env: Dict[str, str]) -> subprocess.CompletedProcess:
    p = subprocess.run([*on_host(host), "-m", "migrate", *map(str, args)], env=env, capture_output=True, text=True)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def _two_pods(tmp_path: Path, cli_env, a: Models, b: Models):
    target = tmp_path / "volume" / "models"
    target.parent.mkdir(parents=True, exist_ok=True)     # the volume is mounted (run makes only the target)
    pods = []
    for name, models in (("a", a), ("b", b)):
        comfyui, env = make_pod(tmp_path / name, models)
        pods.append((comfyui, dict(cli_env, **env), f"pod-{name}"))
    runs = target / STATE_DIR / "runs"

    def run(i: int) -> str:
        comfyui, env, host = pods[i]
        before = set(runs.glob("*.jsonl")) if runs.exists() else set()
        _cli_on(host, ["run", "--comfyui", comfyui, "--target", target, "--yes"], env)
        new, = [p for p in set(runs.glob("*.jsonl")) - before if not p.name.endswith(".rollback.jsonl")]
        return new.name[:-len(".jsonl")]

    def rollback(i: int, run_id: str) -> str:
        comfyui, env, host = pods[i]
        return _cli_on(host, ["rollback", run_id, "--target", target, "--yes"], env).stdout
    return target, pods, run, rollback


def test_own_dedupe_link_gives_the_source_back_after_another_pods_rollback(tmp_path, cli_env):
    """Pod A's second run stores its file as a dedupe link of pod B's stored copy (same inode as its
    source, so the source is unlinked). B's rollback removes B's name; A's rollback must recreate
    its file from its own link, not report 'the stored copy changed' and leave it in the store."""
    data = blob("m10", 16 << 10)
    a, b = models_of({"vae/sub/m10.safetensors": data}), models_of({"embeddings/m2.safetensors": data})
    target, pods, run, rollback = _two_pods(tmp_path, cli_env, a, b)
    a1 = run(0)                       # A: link vae/sub/m10 into the store
    b1 = run(1)                       # B: embeddings/m2 as a dedupe link of it
    rollback(0, a1)                   # A's source back as a hardlink; A's stored name removed
    a2 = run(0)                       # A: vae/sub/m10 as a dedupe link of embeddings/m2, source unlinked
    assert set(store_files(target)) == {"vae/sub/m10.safetensors", "embeddings/m2.safetensors"}
    rollback(1, b1)                   # B's name leaves the store; A's own link still holds the content
    assert set(store_files(target)) == {"vae/sub/m10.safetensors"}
    rollback(0, a2)
    for (comfyui, _, _), models in zip(pods, (a, b)):
        for rel, want in models.items():
            assert (comfyui / "models" / rel).read_bytes() == want, (comfyui, rel)
    assert store_files(target) == {}


def test_kept_file_a_later_run_of_its_pod_relied_on_leaves_with_that_run(tmp_path, cli_env):
    """A file kept for pod B when pod A rolled back; A's next run relies on it (its source, a
    hardlink of it, unlinked) without being named in the keep record. Once B and A are rolled
    back, the store is empty; a drop never happens while another live run relies on the file."""
    models = models_of({"checkpoints/common.safetensors": blob("common", 24 << 10)})
    target, pods, run, rollback = _two_pods(tmp_path, cli_env, models, models)
    a1 = run(0)
    b1 = run(1)                       # B: already there, its copy set aside
    assert "kept in the store" in rollback(0, a1)
    a2 = run(0)                       # A relies on the kept file now
    rollback(1, b1)
    assert set(store_files(target)) == {"checkpoints/common.safetensors"}      # A's run still relies on it
    rollback(0, a2)
    for comfyui, _, _ in pods:
        for rel, want in models.items():
            assert (comfyui / "models" / rel).read_bytes() == want, (comfyui, rel)
    assert store_files(target) == {}


@pytest.mark.parametrize("where", ["same-fs", "other-fs"])
def test_rollback_of_a_pod_killed_before_placing_leaves_another_pods_file_alone(tmp_path, cli_env, where,
                                                                                request):
    """Pod A is SIGKILLed right after journalling that it will place vae/big (a hardlink; or a copy,
    staged in a temporary file but not yet published), before doing it; pod B then places its own file under that name. A's
    rollback must see that the step never happened (the stored file is B's), finish with exit 0
    and leave B's file where B's YAML finds it. Found by scripts/torture's fleet family."""
    models = models_of({"vae/big.safetensors": blob("big", 64 << 10)})
    base = request.getfixturevalue("other_fs") if where == "other-fs" else tmp_path
    target = base / "volume" / "models"
    target.parent.mkdir(parents=True, exist_ok=True)     # the volume is mounted (run makes only the target)
    (ca, ea), (cb, eb), (cc, ec) = (make_pod(tmp_path / n, models) for n in "abc")
    # The journal record that begins placing vae/big, read from a complete run of an identical pod.
    run_cli(["run", "--comfyui", cc, "--target", base / "scratch", "--yes"], dict(cli_env, **ec))
    log, = (base / "scratch" / STATE_DIR / "runs").glob("*.jsonl")
    records = read_log(str(log))[0]
    begin = next(r for r in records if r.get("type") == "begin" and r.get("dst", "").endswith("vae/big.safetensors")
                 and r.get("op") in ("link", "rename", "copy"))
    # A copy is killed once its temporary file is staged (logged with its inode), before the publish.
    place = begin["seq"] if begin["op"] != "copy" else next(
        r["seq"] for r in records if r.get("type") == "staged" and r.get("step") == begin["step"])
    assert begin["op"] == ("copy" if where == "other-fs" else "link")
    env_a = dict(cli_env, **ea, COMFY_MIGRATE_CRASH_AT=str(place))
    killed = subprocess.run([sys.executable, "-m", "migrate", "run", "--comfyui", str(ca), "--target", str(target),
                             "--yes"], env=env_a, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_cli(["run", "--comfyui", cb, "--target", target, "--yes"], dict(cli_env, **eb))
    stored = (target / "vae" / "big.safetensors").stat()
    a_log = next(p for p in (target / STATE_DIR / "runs").glob("*.jsonl")
                 if read_log(str(p))[0][0]["sources"] == [str(ca / "models")])
    out = run_cli(["rollback", a_log.name[:-len(".jsonl")], "--target", target, "--yes"], dict(cli_env, **ea))
    assert "skipped" not in out.stdout or " 0 skipped" in out.stdout, out.stdout
    assert (ca / "models" / "vae" / "big.safetensors").read_bytes() == models["vae/big.safetensors"]
    after = (target / "vae" / "big.safetensors").stat()
    assert (after.st_ino, after.st_mtime_ns) == (stored.st_ino, stored.st_mtime_ns)     # B's file untouched
    assert resolve(cb, "vae", "big.safetensors").read_bytes() == models["vae/big.safetensors"]


@pytest.mark.slow
def test_a_lock_taken_after_a_long_wait_is_fresh_not_stale(tmp_path, monkeypatch):
    """A run that waited longer than the lease links its lock file into place: the lock must carry
    a fresh heartbeat at once. (Its mtime was the waiting file's creation time, so the next waiter
    took it for stale and broke it: two runs in the store at once, found by scripts/torture's fleet
    family as 'File exists' and the same content stored twice. In use: --wait 900 > lease 600.)"""
    import threading
    from migrate.disk import lock
    from migrate.core.errors import Locked
    monkeypatch.setattr(lock, "LEASE_SECONDS", 1.0)
    monkeypatch.setattr(lock, "HEARTBEAT_SECONDS", 0.1)
    sd = str(tmp_path / STATE_DIR)
    first = lock.TargetLock(sd, "first").acquire()
    got = []
    waiter = threading.Thread(target=lambda: got.append(lock.TargetLock(sd, "second").acquire(wait=30)))
    waiter.start()
    time.sleep(1.6)                      # the waiter has waited longer than the lease
    released = time.time()
    first.release()
    waiter.join(30)
    second, = got
    try:
        # Stamped when it was taken, after the release, not when the waiting began 1.6 s before
        # (an upper bound on the age would be a timed assertion: a busy machine delays the stat).
        assert os.stat(second.path).st_mtime >= released - 0.5
        assert second.took_over is None
        with pytest.raises(Locked):      # a third run sees a live lock, not a stale one
            lock.TargetLock(sd, "third").acquire(wait=0)
    finally:
        second.release()


def test_a_log_torn_in_its_header_stops_no_other_run(tmp_path, cli_env):
    """A pod killed while writing its log's first line leaves a log without one whole record (and a
    pod writing its header looks the same for a moment). It changed nothing: other pods' runs,
    history and rollback go on (exit 0), they do not fail on it with 'bad log'."""
    a = models_of({"vae/a.safetensors": blob("a", 8 << 10)})
    b = models_of({"loras/b.safetensors": blob("b", 8 << 10)})
    target, pods, run, rollback = _two_pods(tmp_path, cli_env, a, b)
    a1 = run(0)
    first = (target / STATE_DIR / "runs" / f"{a1}.jsonl").read_bytes().split(b"\n", 1)[0]
    torn = target / STATE_DIR / "runs" / "29991231T235959Z-dead00.jsonl"     # the newest name
    torn.write_bytes(first[:len(first) // 2])
    run(1)
    comfyui, env, host = pods[0]
    assert "holds no complete record" in _cli_on(host, ["history", "--target", target], env).stdout
    rollback(0, a1)
    assert (pods[0][0] / "models" / "vae" / "a.safetensors").read_bytes() == a["vae/a.safetensors"]


@pytest.mark.parametrize("order", ["bca", "bac", "ba"])
def test_a_placement_a_killed_run_never_made_is_not_its_file(tmp_path, cli_env, order):
    """Pod A is SIGKILLed right after journalling that it will link checkpoints/common, before doing
    it. Pod B then stores its own copy there; A, run again, finds it "already there" and sets its
    source aside trusting it (and C, when there, does the same). A never placed that file: A relies
    on it. So B's rollback keeps it for A (names A), A's rollback claims no keeping of it, and once
    every pod is rolled back (in `order`) the store is empty. Before: A's begun step counted as A's
    placement, so B's rollback left A out of the keep record (with two pods, it took the file from
    under A's YAML) and no later rollback dropped it. Found by scripts/torture's fleet family
    (fleet-0397 of seed 36)."""
    third = "c" in order
    models = models_of({"checkpoints/common.safetensors": blob("common", 24 << 10)})
    target = tmp_path / "volume" / "models"
    target.parent.mkdir(parents=True, exist_ok=True)     # the volume is mounted (run makes only the target)
    names = "abc" if third else "ab"
    pods = {n: make_pod(tmp_path / n, models) for n in names + "d"}
    env = {n: dict(cli_env, **e) for n, (_, e) in pods.items()}
    yaml = {n: (c / "extra_model_paths.yaml").read_text() for n, (c, _) in pods.items()}
    runs = target / STATE_DIR / "runs"

    def run(n: str, **extra: str) -> str:
        before = set(runs.glob("*.jsonl")) if runs.exists() else set()
        run_cli(["run", "--comfyui", pods[n][0], "--target", target, "--yes"], dict(env[n], **extra))
        new = [p for p in set(runs.glob("*.jsonl")) - before if not p.name.endswith(".rollback.jsonl")]
        return new[0].name[:-len(".jsonl")] if new else ""

    # The journal record that begins linking common, read from a complete run of an identical pod.
    run_cli(["run", "--comfyui", pods["d"][0], "--target", tmp_path / "scratch", "--yes"], env["d"])
    log, = (tmp_path / "scratch" / STATE_DIR / "runs").glob("*.jsonl")
    begin = next(r for r in read_log(str(log))[0] if r.get("type") == "begin" and r.get("op") == "link")
    killed = subprocess.run([sys.executable, "-m", "migrate", "run", "--comfyui", str(pods["a"][0]), "--target",
                             str(target), "--yes"], env=dict(env["a"], COMFY_MIGRATE_CRASH_AT=str(begin["seq"])),
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    a, = [p.name[:-len(".jsonl")] for p in runs.glob("*.jsonl")]
    b = run("b")                                         # B links its own copy, unlinks its source
    assert run("a") == ""                                # A continues its run: already there, source set aside
    a_log = read_log(str(runs / f"{a}.jsonl"))[0]
    assert any(r.get("op") == "quarantine" and r.get("stored", "").endswith("checkpoints/common.safetensors")
               for r in a_log if r.get("type") == "begin")
    c = run("c") if third else None
    run_cli(["rollback", b, "--target", target, "--yes"], env["b"])
    keep, = [r for r in read_log(str(runs / f"{b}.rollback.jsonl"))[0] if r.get("type") == "keep"]
    assert a in keep["for"], keep
    assert str(resolve(pods["a"][0], "checkpoints", "common.safetensors")).startswith(str(target))
    for i, n in enumerate(order[1:], 1):
        if n == "a":                              # the dry run says the same
            dry = run_cli(["rollback", a, "--target", target, "--dry-run"], env[n]).stdout
            assert "kept in the store" not in dry, dry
        out = run_cli(["rollback", {"a": a, "c": c}[n], "--target", target, "--yes"], env[n]).stdout
        assert " 0 skipped" in out and (n != "a" or "kept" not in out), out
        for live in order[i + 1:]:                # still found in the store by those not rolled back
            assert str(resolve(pods[live][0], "checkpoints", "common.safetensors")).startswith(str(target))
    assert store_files(target) == {}
    for n in names:
        comfyui = pods[n][0]
        assert (comfyui / "extra_model_paths.yaml").read_text() == yaml[n], n
        for rel, want in models.items():
            assert (comfyui / "models" / rel).read_bytes() == want, (n, rel)


def _catalogue_describes_the_store(target: Path) -> None:
    """After a run or rollback finished (no run left interrupted): every stored file is listed,
    with the digest of its bytes and its identity now."""
    cat, warning = store_catalogue.load(str(target))
    assert warning == ""
    assert {rel: (e.digest, e.ino, e.size, e.mtime_ns) for rel, e in cat.items()} == {
        rel: (digest(Path(target, rel).read_bytes()), st.st_ino, st.st_size, st.st_mtime_ns)
        for rel, st in store_files(target).items()}


def _record_seq(cli_env, env: Dict[str, str], comfyui: Path, scratch: Path, pick, like: Optional[Path] = None) -> int:
    """The seq of the journal record `pick(records)` names, read from a complete run of an
    identical pod into a scratch store (a crash point for COMFY_MIGRATE_CRASH_AT). `like`: a store
    whose top folders the scratch store gets first (a run makes only the category folders missing)."""
    for d in (sorted(p.name for p in like.iterdir() if p.is_dir() and not p.name.startswith("."))
              if like is not None and like.is_dir() else []):
        (scratch / d).mkdir(parents=True, exist_ok=True)
    run_cli(["run", "--comfyui", comfyui, "--target", scratch, "--yes"], dict(cli_env, **env))
    log, = (scratch / STATE_DIR / "runs").glob("*.jsonl")
    return pick(read_log(str(log))[0])


def _killed_run(cli_env, env: Dict[str, str], comfyui: Path, target: Path, crash_at: int) -> None:
    killed = subprocess.run([sys.executable, "-m", "migrate", "run", "--comfyui", str(comfyui), "--target",
                             str(target), "--yes"], env=dict(cli_env, **env, COMFY_MIGRATE_CRASH_AT=str(crash_at)),
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr


@pytest.mark.parametrize("where", ["same-fs", "other-fs"])
def test_catalogue_lists_what_a_killed_run_placed_once_it_is_continued(tmp_path, cli_env, where, request):
    """A run SIGKILLed after placing loras/a (a hardlink; a verified copy across filesystems) and
    removing its source: the run that continues it plans without that source, and the store's
    size of it meets no source left. The catalogue it writes must still list loras/a: a catalogue
    may lack entries only while a run is interrupted. Found by scripts/torture's fleet family."""
    models = models_of({"loras/a.safetensors": blob("a", 20 << 10), "vae/b.safetensors": blob("b", 12 << 10)})
    base = request.getfixturevalue("other_fs") if where == "other-fs" else tmp_path
    target = base / "volume" / "models"
    target.parent.mkdir(parents=True, exist_ok=True)     # the volume is mounted (run makes only the target)
    (ca, ea), (cc, ec) = (make_pod(tmp_path / n, models) for n in "ac")

    def source_of_a_removed(records: List[dict]) -> int:
        begin = next(r for r in records if r.get("type") == "begin" and r.get("op") in ("unlink", "quarantine")
                     and r["src"].endswith("/loras/a.safetensors"))
        return next(r["seq"] for r in records if r.get("type") == "done" and r.get("step") == begin["step"])
    _killed_run(cli_env, ea, ca, target, _record_seq(cli_env, ec, cc, base / "scratch", source_of_a_removed))
    assert not (ca / "models" / "loras" / "a.safetensors").exists()
    proc = run_cli(["run", "--comfyui", ca, "--target", target, "--yes"], dict(cli_env, **ea))
    assert "(continued)" in proc.stdout
    assert set(store_files(target)) == set(models)
    _catalogue_describes_the_store(target)


@pytest.mark.parametrize("then", ["run", "rollback"])
def test_catalogue_lists_what_a_run_killed_before_closing_its_log_placed(tmp_path, cli_env, then):
    """Pod A is SIGKILLed after its last step, before it rewrote the catalogue (the record before
    its log's closing one). The next run or rollback of pod B must list A's files: it knows them
    from A's log (same identity), without reading them."""
    a = models_of({"loras/a.safetensors": blob("a", 20 << 10)})
    b = models_of({"vae/b.safetensors": blob("b", 12 << 10)})
    target = tmp_path / "volume" / "models"
    target.parent.mkdir(parents=True, exist_ok=True)     # the volume is mounted (run makes only the target)
    (ca, ea), (cb, eb), (cc, ec) = make_pod(tmp_path / "a", a), make_pod(tmp_path / "b", b), make_pod(tmp_path / "c", a)
    env_b = dict(cli_env, **eb)
    if then == "rollback":
        run_cli(["run", "--comfyui", cb, "--target", target, "--yes"], env_b)
    _killed_run(cli_env, ea, ca, target, _record_seq(cli_env, ec, cc, tmp_path / "scratch", lambda rs: rs[-2]["seq"],
                                                     like=target))
    if then == "run":
        run_cli(["run", "--comfyui", cb, "--target", target, "--yes"], env_b)
        assert set(store_files(target)) == {"loras/a.safetensors", "vae/b.safetensors"}
    else:
        b_log, = [p for p in (target / STATE_DIR / "runs").glob("*.jsonl")
                  if read_log(str(p))[0][0]["sources"] == [str(cb / "models")]]
        run_cli(["rollback", b_log.name[:-len(".jsonl")], "--target", target, "--yes"], env_b)
        assert set(store_files(target)) == {"loras/a.safetensors"}
    _catalogue_describes_the_store(target)


@pytest.mark.parametrize("what", ["run", "rollback"])
def test_catalogue_is_rewritten_before_a_log_closes(tmp_path, cli_env, what):
    """SIGKILL right after the closing record of a run (or of its rollback): nothing is left to
    continue, so the catalogue must already describe the store (it is rewritten before the log
    closes, as part of finishing)."""
    a = models_of({"loras/a.safetensors": blob("a", 20 << 10), "vae/b.safetensors": blob("b", 12 << 10)})
    target = tmp_path / "volume" / "models"
    target.parent.mkdir(parents=True, exist_ok=True)     # the volume is mounted (run makes only the target)
    (ca, ea), (cc, ec) = make_pod(tmp_path / "a", a), make_pod(tmp_path / "c", a)
    scratch = tmp_path / "scratch"
    close = _record_seq(cli_env, ec, cc, scratch, lambda rs: rs[-1]["seq"])
    if what == "run":
        _killed_run(cli_env, ea, ca, target, close)
        assert set(store_files(target)) == set(a)
    else:
        run_cli(["rollback", "--target", scratch, "--yes"], dict(cli_env, **ec))
        rb, = (scratch / STATE_DIR / "runs").glob("*.rollback.jsonl")
        close = read_log(str(rb))[0][-1]["seq"]
        run_cli(["run", "--comfyui", ca, "--target", target, "--yes"], dict(cli_env, **ea))
        killed = subprocess.run([sys.executable, "-m", "migrate", "rollback", "--target", str(target), "--yes"],
                                env=dict(cli_env, **ea, COMFY_MIGRATE_CRASH_AT=str(close)), capture_output=True, text=True)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert store_files(target) == {}
    runs = [p for p in (target / STATE_DIR / "runs").glob("*.jsonl")]
    assert all(read_log(str(p))[0][-1]["type"] == "close" for p in runs), runs
    _catalogue_describes_the_store(target)


def test_catalogue_reads_a_placed_name_replaced_since_but_never_a_file_put_in_by_hand(tmp_path, cli_env):
    """A stored file edited by hand since its run placed it matches no logged identity: the next
    run re-reads it. A file put in the store by hand is left to the first plan whose sizes meet it
    (a store filled by hand may hold many gigabytes no plan ever needs)."""
    a = models_of({"loras/a.safetensors": blob("a", 20 << 10)})
    b = models_of({"vae/b.safetensors": blob("b", 12 << 10)})
    target = tmp_path / "volume" / "models"
    target.parent.mkdir(parents=True, exist_ok=True)     # the volume is mounted (run makes only the target)
    (ca, ea), (cb, eb) = make_pod(tmp_path / "a", a), make_pod(tmp_path / "b", b)
    run_cli(["run", "--comfyui", ca, "--target", target, "--yes"], dict(cli_env, **ea))
    edited = as_model("loras/a.safetensors", blob("edited", 9 << 10))
    (target / "loras" / "a.safetensors").write_bytes(edited)
    (target / "checkpoints").mkdir(exist_ok=True)      # the run made every category's folder
    (target / "checkpoints" / "mine.safetensors").write_bytes(as_model("checkpoints/mine.safetensors", blob("x", 7 << 10)))
    run_cli(["run", "--comfyui", cb, "--target", target, "--yes"], dict(cli_env, **eb))
    cat, _ = store_catalogue.load(str(target))
    assert {rel: e.digest for rel, e in cat.items()} == {
        "loras/a.safetensors": digest(edited), "vae/b.safetensors": digest(b["vae/b.safetensors"])}


def test_placements_give_a_digest_only_where_the_logged_identity_matches():
    t = "/v/models"
    log = [{"type": "header", "run": "r1", "target": t},
           {"type": "begin", "step": 2, "op": "link", "dst": f"{t}/a", "ino": 1, "size": 10, "mtime_ns": 100, "digest": "da"},
           {"type": "begin", "step": 3, "op": "copy", "dst": f"{t}/c", "ino": 50, "size": 20, "mtime_ns": 200, "digest": "dc"},
           {"type": "staged", "step": 3, "tmp_ino": 7},
           {"type": "begin", "step": 5, "op": "dedupe", "dst": f"{t}/d", "stored_ino": 1, "ino": 60, "size": 10,
            "mtime_ns": 300, "digest": "da"},
           {"type": "begin", "step": 6, "op": "link", "dst": f"{t}/e", "ino": 9, "size": 10, "mtime_ns": 100, "digest": "de"},
           {"type": "begin", "step": 7, "op": "unlink", "dst": f"{t}/g", "ino": 8, "size": 4, "mtime_ns": 4, "digest": "dg"}]
    other = [{"type": "header", "run": "r2", "target": "/elsewhere/models"},     # another mount of the volume
             {"type": "begin", "step": 2, "op": "rename", "dst": "/elsewhere/models/m", "ino": 20, "size": 3,
              "mtime_ns": 3, "digest": "dm"}]
    logged, by_ident, names = store_catalogue.placements([log, other])
    assert names == {"a", "c", "d", "e", "m"}
    walked = [("a", (1, 10, 100), 9),        # linked: the source's identity
              ("c", (7, 20, 200), 9),        # copied: the staged inode, the source's size and mtime
              ("d", (1, 10, 100), 9),        # a dedupe link of a (the source's own identity is not it)
              ("e", (11, 10, 100), 9),       # the link never happened: another file holds the name
              ("m", (20, 3, 3), 9),
              ("g", (8, 4, 4), 9),           # named by a record that placed nothing
              ("h", (12, 5, 5), 9)]          # put there by hand
    cat = store_catalogue.reconcile(walked, {}, by_ident, {}, logged)
    assert {k: (e.digest, e.run) for k, e in cat.items()} == {
        "a": ("da", "r1"), "c": ("dc", "r1"), "d": ("da", None), "m": ("dm", "r2")}


def test_placements_know_a_copy_by_the_mtime_the_store_kept():
    """A store keeping mtimes to the second (MooseFS) rounds a copy's: the log's observed mtime of the
    published copy identifies it, so the catalogue's refresh after a run reads no copied file back."""
    t = "/v/models"
    log = [{"type": "header", "run": "r1", "target": t},
           {"type": "begin", "step": 2, "op": "copy", "dst": f"{t}/c", "ino": 50, "size": 20,
            "mtime_ns": 1_690_000_000_123_456_789, "digest": "dc"},
           {"type": "staged", "step": 2, "tmp_ino": 7},
           {"type": "done", "step": 2, "dst_ino": 7, "dst_mtime_ns": 1_690_000_000_000_000_000}]
    logged, by_ident, _ = store_catalogue.placements([log])
    cat = store_catalogue.reconcile([("c", (7, 20, 1_690_000_000_000_000_000), 9)], {}, by_ident, {}, logged)
    assert {k: e.digest for k, e in cat.items()} == {"c": "dc"}


_NS_HOLDER = """
import os, sys, time
from migrate.core.errors import Locked
from migrate.disk.lock import TargetLock
sd, trace, rounds, wait = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
me = f"{os.readlink('/proc/self/ns/pid')}:{os.getpid()}"
for _ in range(rounds):
    try:
        lock = TargetLock(sd, "test").acquire(wait)
    except Locked as exc:
        with open(trace, "a") as f: f.write(f"locked {me} {exc}\\n")
        sys.exit(5)
    with open(trace, "a") as f: f.write(f"in {me} {lock.took_over}\\n")
    if rounds == 1 and wait == 0 and os.environ.get("HOLD"):
        time.sleep(3600)              # held until SIGKILLed
    time.sleep(0.2)
    with open(trace, "a") as f: f.write(f"out {me}\\n")
    lock.release()
"""


def _unshare_pid() -> Optional[List[str]]:
    """`unshare` making a PID namespace: as root, else inside a user namespace (unprivileged)."""
    for extra in ([], ["--user", "--map-root-user"]):
        cmd = ["unshare", *extra, "--pid", "--fork", "--mount-proc", "--kill-child"]
        try:
            if subprocess.run(cmd + ["true"], capture_output=True).returncode == 0:
                return cmd
        except OSError:
            return None
    return None


UNSHARE_PID = _unshare_pid()


def _in_pid_namespace(*args: str, env: Optional[Dict[str, str]] = None, keep: bool = False) -> subprocess.Popen:
    """A process in a PID namespace of its own (its pid 1), with our host name (no UTS namespace):
    a container started with `docker --network host` or compose's `hostname:`. keep: under a shell
    as pid 1 that outlives it, as a container's init does (a namespace lives while a process of it
    does; a dead one's number may be given to the next namespace made)."""
    assert UNSHARE_PID is not None
    run = [sys.executable, "-c", _NS_HOLDER, *args]
    if keep:
        run = ["sh", "-c", 'code=$1; shift; "$0" -c "$code" "$@"; exec sleep 3600', *run[:1], *run[2:]]
    return subprocess.Popen([*UNSHARE_PID, *run], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _children(pid: int) -> List[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


@pytest.mark.skipif(UNSHARE_PID is None, reason="`unshare --pid --mount-proc` is refused here (not root, and no "
                    "user namespaces): the volume suite (scripts/volumes) runs the same as root")
def test_two_pid_namespaces_with_one_host_name_never_hold_the_lock_at_once(tmp_path):
    """Each holder is pid 1 (or 2) of its own namespace: the other's pid 1 (itself, started later) is
    not the holder, so the pid decides nothing there; only the holder's lease does. They race: never
    both inside. A holder SIGKILLed (its container, the namespace, still there) keeps the store locked
    until its lease runs out, then is taken over."""
    sd, trace = tmp_path / "state", tmp_path / "trace"
    sd.mkdir()
    env = dict(os.environ, COMFY_MIGRATE_LOCK_LEASE="60")
    racers = [_in_pid_namespace(str(sd), str(trace), "4", "120", env=env) for _ in range(2)]
    assert [p.wait(300) for p in racers] == [0, 0], [p.stderr.read() for p in racers]
    lines = trace.read_text().splitlines()
    assert len(lines) == 16 and len({ln.split()[1] for ln in lines}) == 2
    for i in range(0, 16, 2):
        assert lines[i].startswith("in ") and lines[i + 1] == "out " + lines[i].split()[1], lines
    assert all(ln.endswith(" None") for ln in lines if ln.startswith("in "))     # nothing taken over

    trace.unlink()
    container = _in_pid_namespace(str(sd), str(trace), "1", "0", env=dict(env, HOLD="1"), keep=True)
    try:
        while not trace.exists():
            assert container.poll() is None, container.stderr.read()
            time.sleep(0.05)
        other = _in_pid_namespace(str(sd), str(trace), "1", "0", env=env)
        assert other.wait(60) == 5, other.stderr.read()              # alive: never taken over
        init, = _children(container.pid)
        holder, = _children(init)
        os.kill(holder, signal.SIGKILL)                              # the run dies, its container lives on
        while _children(init) == [holder]:
            time.sleep(0.05)
        other = _in_pid_namespace(str(sd), str(trace), "1", "0", env=env)
        assert other.wait(60) == 5                                   # dead, but its lease (60 s) runs
    finally:
        container.kill()                                             # SIGKILL: unshare kills its child
        container.wait()
    lines = trace.read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == ["in", "locked", "locked"], lines
    assert "heartbeat" in lines[-1] and "pid 2 " in lines[-1]
    old = time.time() - 61                                           # the lease ran out (as if 61 s later)
    os.utime(sd / "lock", (old, old))
    other = _in_pid_namespace(str(sd), str(trace), "1", "0", env=env)
    assert other.wait(60) == 0, other.stderr.read()
    last = trace.read_text().splitlines()[-2]
    assert last.startswith("in ") and "'reason': 'its heartbeat is 6" in last, last
    assert not (sd / "lock").exists() and not list(sd.glob("lock.*"))
