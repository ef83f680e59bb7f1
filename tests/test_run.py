"""`comfy-migrate run` end to end on real trees in tmp_path (and /dev/shm as a second filesystem).

The CLI runs as a subprocess (conftest's `run_cli`, state confined to tmp_path); fault injection
that needs a patched write (disk full) or a change between plan and run drives execute_plan
in-process. "Resolves" always means ComfyUI's own order (migrate.core.comfy.search_folders) applied to
the YAML on disk, checked against digests computed here with xxh3-128, independently of the tool.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest
import xxhash
import yaml

from conftest import as_model, make_pod, run_cli, run_leaving_conflicts, snapshot_tree
from migrate.core import comfy
from migrate.disk import fsops
from migrate.disk.journal import read_log
from migrate.core.model import STATE_DIR, Policy

TEMP_MARK = ".cm-tmp-"
NOT_MODELS = (".part", ".tmp", ".crdownload", ".aria2", ".incomplete", ".download")
PLACE_OPS = {"link", "rename", "copy", "dedupe", "symlink"}

Key = Tuple[str, str]      # (canonical category, name relative to its folder)


# --- independent facts about trees -------------------------------------------------------------------

def xxh(path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_model(path: str, name: str) -> bool:
    st = os.lstat(path)
    base = os.path.basename(name).lower()
    return (stat.S_ISREG(st.st_mode) and st.st_size > 0 and not base.endswith(NOT_MODELS)
            and not (base.startswith("put_") and "_here" in base) and TEMP_MARK not in base)


def files_under(folder: str) -> Dict[str, str]:
    """name relative to folder -> absolute path, for model files (no symlinks, no state folder)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d != STATE_DIR]
        for fn in filenames:
            p = os.path.join(dirpath, fn)
            name = os.path.relpath(p, folder)
            if is_model(p, name):
                out[name] = p
    return out


def original_models(comfyui: Path) -> Dict[Key, str]:
    """What ComfyUI loads today: (category, name) -> digest of the first folder holding the name."""
    models = str(comfyui / "models")
    yaml_path = comfyui / "extra_model_paths.yaml"
    texts = [(str(yaml_path), yaml_path.read_text())] if yaml_path.exists() else []
    order = comfy.search_folders(texts, models)
    cats = {}
    for folder in sorted(os.listdir(models)):
        if folder == STATE_DIR or not os.path.isdir(os.path.join(models, folder)) \
                or os.path.islink(os.path.join(models, folder)):
            continue
        cat, custom = comfy.category_of(folder)
        cats.setdefault(cat, order.get(cat) if not custom else [os.path.join(models, folder)])
    snap: Dict[Key, str] = {}
    for cat, folders in cats.items():
        for f in reversed(folders):          # the first folder wins: let it write last
            if os.path.isdir(f):
                for name, p in files_under(f).items():
                    snap[(cat, name)] = xxh(p)
    return snap


def resolve(comfyui: Path, key: Key) -> Optional[str]:
    """The file ComfyUI loads for (category, name) under the YAML now on disk, or None."""
    yaml_path = comfyui / "extra_model_paths.yaml"
    order = comfy.search_folders([(str(yaml_path), yaml_path.read_text())], str(comfyui / "models"))
    cat, name = key
    for folder in order.get(cat, []):
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return p
    return None


def inside(path: str, root) -> bool:
    root = os.path.realpath(root)
    return os.path.realpath(os.path.dirname(path)).startswith(root.rstrip("/") + "/") or \
        os.path.realpath(os.path.dirname(path)) == root


def assert_resolves_in_target(comfyui: Path, target: Path, expected: Dict[Key, str], skip=()) -> None:
    bad = []
    for key, digest in sorted(expected.items()):
        if key in skip:
            continue
        p = resolve(comfyui, key)
        if p is None or not inside(p, target) or xxh(p) != digest:
            bad.append((key, p, p and xxh(p) == digest))
    assert not bad, f"names not found first in the target with their bytes: {bad}"


def target_inodes(target: Path) -> Dict[str, Set[Tuple[int, int]]]:
    """digest -> distinct inodes of regular files in the target (state folder excluded)."""
    out: Dict[str, Set[Tuple[int, int]]] = {}
    for name, p in files_under(str(target)).items():
        st = os.lstat(p)
        out.setdefault(xxh(p), set()).add((st.st_dev, st.st_ino))
    return out


def assert_stored_once(target: Path, digests) -> None:
    inodes = target_inodes(target)
    for d in digests:
        assert len(inodes.get(d, ())) == 1, f"content {d} stored {len(inodes.get(d, ()))} times in the target"


def temps(*roots) -> List[str]:
    found = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            found += [os.path.join(dirpath, n) for n in filenames + dirnames if TEMP_MARK in n]
    return found


def all_digests(*roots) -> Set[str]:
    """Digests of every regular file anywhere below roots (state and quarantine folders included)."""
    out = set()
    for root in roots:
        for dirpath, _, filenames in os.walk(root):
            for fn in filenames:
                p = os.path.join(dirpath, fn)
                if stat.S_ISREG(os.lstat(p).st_mode):
                    out.add(xxh(p))
    return out


def run_logs(target: Path) -> List[Path]:
    return sorted((target / STATE_DIR / "runs").glob("*.jsonl"))


def check_logs(target: Path, closed: bool = True) -> None:
    """Every log reads cleanly; the newest is closed; no name was placed twice."""
    logs = run_logs(target)
    assert logs, "no audit log"
    for log in logs:
        records, _, torn = read_log(str(log))
        assert not torn, f"{log}: torn tail left behind"
    records = read_log(str(logs[-1]))[0]
    if closed:
        assert records[-1]["type"] == "close", records[-1]
    begins = {r["step"]: r for r in records if r.get("type") == "begin"}
    placed: Dict[str, int] = {}
    for r in records:
        if r.get("type") == "done" and begins[r["step"]]["op"] in PLACE_OPS:
            dst = begins[r["step"]]["dst"]
            placed[dst] = placed.get(dst, 0) + 1
    assert all(n == 1 for n in placed.values()), {d: n for d, n in placed.items() if n > 1}


def yaml_of(comfyui: Path) -> Path:
    return comfyui / "extra_model_paths.yaml"


def run_args(comfyui, target, *extra) -> list:
    return ["run", "--comfyui", str(comfyui), "--target", str(target), *extra]


def conflicts(pod_target: Path, expected: Dict[Key, str]) -> Set[Key]:
    """Names the target already held with other content before the run (left in place)."""
    out = set()
    for name, p in files_under(str(pod_target)).items():
        cat_folder, rest = name.split("/", 1)
        key = (comfy.category_of(cat_folder)[0], rest)
        if key in expected and expected[key] != xxh(p):
            out.add(key)
    return out


def copy_target(pod, dest: Path) -> Path:
    """The pod's pre-filled store, copied (bytes, modes, mtimes) to dest."""
    shutil.copytree(pod.target, dest, symlinks=True)
    return dest


# --- 1. same filesystem move --------------------------------------------------------------------------

def test_move_same_filesystem_resolves_in_target(pod, cli_env):
    expected = original_models(pod.comfyui)
    skip = conflicts(pod.target, expected)
    assert skip == {("loras", "WanAnimate_relight_lora_fp16.safetensors")}
    conflict_src = pod.models / "loras" / "WanAnimate_relight_lora_fp16.safetensors"
    conflict_before = conflict_src.read_bytes()
    yaml_before = yaml_of(pod.comfyui).read_bytes()

    run_leaving_conflicts(run_args(pod.comfyui, pod.target, "--yes")[1:], cli_env)

    assert_resolves_in_target(pod.comfyui, pod.target, expected, skip)
    assert_stored_once(pod.target, {d for k, d in expected.items() if k not in skip})
    after = yaml_of(pod.comfyui).read_bytes()
    assert after.startswith(yaml_before)
    data = yaml.safe_load(after)
    assert data["other_ui"] == {"base_path": "/opt/other", "checkpoints": "models/Stable-diffusion"}
    assert data["comfy_migrate"]["is_default"] is True
    assert conflict_src.read_bytes() == conflict_before            # the conflict stays, untouched
    assert not temps(pod.root)
    check_logs(pod.target)
    # same filesystem: nothing was copied, sources holding their own inode were unlinked, not copied
    for name, p in files_under(str(pod.target)).items():
        assert os.lstat(p).st_dev == os.stat(pod.models).st_dev


# --- 2. cross filesystem ------------------------------------------------------------------------------

def test_move_cross_filesystem_copies_and_quarantines(pod, cli_env, other_fs):
    target = copy_target(pod, other_fs / "models")
    expected = original_models(pod.comfyui)
    skip = conflicts(target, expected)
    originals = {rel: xxh(p) for rel, p in files_under(str(pod.models)).items()}
    yaml_before = yaml_of(pod.comfyui).read_bytes()

    proc = run_leaving_conflicts(run_args(pod.comfyui, target, "--yes")[1:], cli_env)

    assert_resolves_in_target(pod.comfyui, target, expected, skip)
    assert_stored_once(target, {d for k, d in expected.items() if k not in skip})
    assert yaml_of(pod.comfyui).read_bytes().startswith(yaml_before)
    yaml.safe_load(yaml_of(pod.comfyui).read_text())
    [log] = run_logs(target)
    run_id = log.name[:-len(".jsonl")]
    assert run_id in proc.stdout
    qroot = pod.models / STATE_DIR / "quarantine" / run_id
    conflict_rel = "loras/WanAnimate_relight_lora_fp16.safetensors"
    for rel, digest in originals.items():
        src = pod.models / rel
        if rel == conflict_rel:
            assert src.is_file() and not src.is_symlink() and xxh(src) == digest
            continue
        q = qroot / rel
        assert q.is_file() and not q.is_symlink(), f"{rel} not quarantined"
        assert xxh(q) == digest, f"{rel}: quarantined bytes differ"
        assert not (src.exists() and not src.is_symlink()), f"{rel}: source still a regular file"
        # ComfyUI's own folders lose the name; custom-node folders keep a symlink to the new home
        if src.is_symlink():
            assert comfy.category_of(rel.split("/")[0])[1], f"{rel}: unexpected link back"
            assert inside(os.path.realpath(src), target) and xxh(src) == digest
    # copies really are copies on the other device
    for p in files_under(str(target)).values():
        assert os.lstat(p).st_dev == os.stat(target).st_dev
    assert not temps(pod.root, target)
    check_logs(target)


# --- 3. link and copy modes ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["link", "copy"])
def test_link_and_copy_modes_leave_sources(pod, cli_env, mode):
    expected = original_models(pod.comfyui)
    skip = conflicts(pod.target, expected)
    before_full = snapshot_tree(pod.models)
    source_inodes = {(os.lstat(p).st_dev, os.lstat(p).st_ino) for p in files_under(str(pod.models)).values()}
    pre_target = {(os.lstat(p).st_dev, os.lstat(p).st_ino) for p in files_under(str(pod.target)).values()}

    run_leaving_conflicts(run_args(pod.comfyui, pod.target, "--yes", "--mode", mode)[1:], cli_env)

    assert_resolves_in_target(pod.comfyui, pod.target, expected, skip)
    assert_stored_once(pod.target, {d for k, d in expected.items() if k not in skip})
    after_full = snapshot_tree(pod.models)
    if mode == "copy":
        assert after_full == before_full          # not a byte, mode, mtime, inode or link count
    else:
        strip = lambda s: {k: v[:4] + v[5:] for k, v in s.items()}   # link counts grow, nothing else
        assert strip(after_full) == strip(before_full)
    for key in expected:
        if key in skip:
            continue
        st = os.stat(resolve(pod.comfyui, key))
        ino = (st.st_dev, st.st_ino)
        if mode == "link":
            assert ino in source_inodes or ino in pre_target, f"{key}: not a hardlink of the source"
        else:
            assert ino not in source_inodes, f"{key}: copy mode shares the source inode"
    assert not temps(pod.root)
    check_logs(pod.target)


# --- 4. a second run ----------------------------------------------------------------------------------

def test_second_run_changes_nothing(pod, cli_env):
    run_leaving_conflicts(run_args(pod.comfyui, pod.target, "--yes")[1:], cli_env)
    before = snapshot_tree(pod.root)
    proc = run_leaving_conflicts(run_args(pod.comfyui, pod.target, "--yes")[1:], cli_env)
    assert "nothing to do" in proc.stdout + proc.stderr
    assert snapshot_tree(pod.root) == before
    assert len(run_logs(pod.target)) == 1


# --- 5. no TTY, no --yes ------------------------------------------------------------------------------

def test_no_tty_without_yes_refuses(pod, cli_env):
    before = snapshot_tree(pod.root)
    proc = subprocess.run([sys.executable, "-m", "migrate", *run_args(pod.comfyui, pod.target)],
                          env=cli_env, cwd=cli_env["HOME"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 7, proc.stderr
    assert "--yes" in proc.stderr
    assert snapshot_tree(pod.root) == before
    assert not (pod.target / STATE_DIR / "runs").exists()


# --- 6. SIGKILL at every record ------------------------------------------------------------------------

SMALL_YAML = "# mine\nmine:\n  base_path: /opt/mine\n  loras: loras\n"


def small_pod(root: Path, target: Path) -> Path:
    """~6 files: a duplicate, a legacy `clip` folder, a custom-node folder, a file already stored."""
    comfyui = root / "ComfyUI"
    m = comfyui / "models"
    files = {
        "checkpoints/base.safetensors": make_pod.safetensors_bytes(24 << 10, "base"),
        "loras/style.safetensors": make_pod.safetensors_bytes(12 << 10, "style"),
        "loras/style_dup.safetensors": make_pod.safetensors_bytes(12 << 10, "style"),
        "clip/t5.safetensors": make_pod.safetensors_bytes(16 << 10, "t5"),
        "insightface/swap.onnx": make_pod.safetensors_bytes(8 << 10, "swap"),
        "vae/vae.safetensors": make_pod.safetensors_bytes(8 << 10, "vae"),
    }
    for i, (rel, data) in enumerate(sorted(files.items())):
        p = m / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000 + i))
    (target / "vae").mkdir(parents=True)
    (target / "vae" / "vae.safetensors").write_bytes(files["vae/vae.safetensors"])
    yaml_of(comfyui).write_text(SMALL_YAML)
    return comfyui


def _env(cli_env, tmp: Path, crash: Optional[int] = None) -> dict:
    env = dict(cli_env, COMFY_MIGRATE_CACHE=str(tmp / "digests.sqlite"))
    if crash is not None:
        env["COMFY_MIGRATE_CRASH_AT"] = str(crash)
    return env


def _count_records(tmp_path: Path, target_base: Path, cli_env) -> int:
    """Records a clean run of the small pod writes."""
    probe = tmp_path / "clean"
    comfyui = small_pod(probe, target_base / "clean")
    run_cli(run_args(comfyui, target_base / "clean", "--yes"), _env(cli_env, probe))
    [log] = run_logs(target_base / "clean")
    records = read_log(str(log))[0]
    assert records[-1]["type"] == "close"
    return len(records)


def _sweep(tmp_path: Path, target_base: Path, cli_env) -> None:
    k = _count_records(tmp_path, target_base, cli_env)
    assert k > 10

    def one(n: int) -> Optional[str]:
        root, target = tmp_path / f"n{n}", target_base / f"n{n}"
        comfyui = small_pod(root, target)
        expected = original_models(comfyui)
        digests = set(expected.values())
        try:
            run_cli(run_args(comfyui, target, "--yes"), _env(cli_env, root, n), check=-signal.SIGKILL)
            proc = run_cli(run_args(comfyui, target, "--yes"), _env(cli_env, root))
            lost = digests - all_digests(target, comfyui / "models")
            assert not lost, f"content lost: {lost}"
            assert not temps(root, target), temps(root, target)
            assert_resolves_in_target(comfyui, target, expected)
            assert_stored_once(target, digests)
            left = files_under(str(comfyui / "models"))
            assert not left, f"sources not moved: {sorted(left)}"
            assert yaml_of(comfyui).read_text().startswith(SMALL_YAML)
            check_logs(target, closed=True)
            if n < k and "nothing to do" not in proc.stderr:
                assert "(continued)" in proc.stdout, proc.stdout
        except AssertionError as exc:
            return f"crash at record {n}/{k}: {exc}"
        return None

    with ThreadPoolExecutor(max_workers=3) as pool:
        failures = [f for f in pool.map(one, range(1, k + 1)) if f]
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_sigkill_at_every_record_same_filesystem(tmp_path, cli_env):
    _sweep(tmp_path, tmp_path / "targets", cli_env)


@pytest.mark.slow
def test_sigkill_at_every_record_cross_filesystem(tmp_path, cli_env, other_fs):
    _sweep(tmp_path, other_fs, cli_env)


def test_killed_before_closing_record_next_run_closes_the_log(tmp_path, cli_env):
    from migrate.disk.runlog import find_interrupted
    k = _count_records(tmp_path, tmp_path / "targets", cli_env)
    root, target = tmp_path / "pod", tmp_path / "targets" / "pod"
    comfyui = small_pod(root, target)
    run_cli(run_args(comfyui, target, "--yes"), _env(cli_env, root, k - 1), check=-signal.SIGKILL)
    run_cli(run_args(comfyui, target, "--yes"), _env(cli_env, root))
    assert find_interrupted(str(target)) is None
    check_logs(target)


# --- 7. disk full (in-process) ------------------------------------------------------------------------

def _plan(comfyui: Path, target: Path, **policy):
    from migrate.disk.facts import gather, make_plan
    facts = gather([str(comfyui / "models")], str(target), str(yaml_of(comfyui)), None)
    return make_plan(facts, Policy(**policy))


def _fill_target_after(monkeypatch, target: Path, limit: int, per_file: bool) -> list:
    """Writes to files on the target's device fail with ENOSPC past `limit` bytes.

    per_file: each file may hold `limit` bytes (the space comes back when a failed temporary is
    removed). Otherwise the target fills up for good: past `limit` bytes in all, and from the first
    refusal on, every later write to the target fails (someone else filled the volume).
    """
    dev = os.stat(target).st_dev
    written: Dict[int, int] = {}
    total = [0]
    failures: list = []
    real = fsops.write_all

    def write_all(fd, data):
        st = os.fstat(fd)
        if st.st_dev == dev:
            n = len(memoryview(data))
            used = (written.get(st.st_ino, 0) if per_file else total[0]) + n
            if used > limit or (failures and not per_file):
                failures.append(fd)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written[st.st_ino] = written.get(st.st_ino, 0) + n
            total[0] += n
        return real(fd, data)

    monkeypatch.setattr(fsops, "write_all", write_all)
    return failures


def test_disk_full_on_one_copy_stops_the_run_and_run_continues_it(pod, other_fs, monkeypatch):
    """The target runs out of room while copying the biggest file (issue 20): the run stops there
    with exit 4 and the message naming both ways on; its log stays open (a `stopped` record, no
    `close`), the YAML and every source are as they were (ComfyUI loads every name from the pod as
    before), no temporary is left. With room again, the next run continues the SAME run (same id,
    one log) and closes it. Before: that file failed, the others went on, the YAML was switched,
    the log closed with exit 1, and the next `run` started a second run."""
    from migrate.core.errors import NoSpace
    from migrate.app.execute import execute_plan
    target = copy_target(pod, other_fs / "models")
    sizes = {rel: os.path.getsize(p) for rel, p in files_under(str(pod.models)).items()}
    ranked = sorted(sizes.values(), reverse=True)
    big = [rel for rel, s in sizes.items() if s == ranked[0]]
    before = {rel: xxh(pod.models / rel) for rel in sizes}
    expected = original_models(pod.comfyui)
    skip = conflicts(target, expected)
    yaml_before = yaml_of(pod.comfyui).read_bytes()
    loads = {key: resolve(pod.comfyui, key) for key in expected}
    loads = {key: xxh(p) for key, p in loads.items() if p is not None}
    assert len(loads) > 10
    plan = _plan(pod.comfyui, target)
    failures = _fill_target_after(monkeypatch, target, ranked[len(big)] + 1, per_file=True)

    with pytest.raises(NoSpace) as stopped:
        execute_plan(plan, ["test"])

    assert failures
    assert stopped.value.exit_code == 4
    assert "free space, then `comfy-migrate run` (continues this run) or `comfy-migrate rollback` (undoes it)" \
        == stopped.value.hint, stopped.value.hint
    assert any(rel in str(stopped.value) for rel in big), str(stopped.value)
    for rel, digest in before.items():          # every source where it was, with its bytes
        assert (pod.models / rel).is_file() and not (pod.models / rel).is_symlink()
        assert xxh(pod.models / rel) == digest
    assert not (pod.models / STATE_DIR).exists(), "a source was set aside before the stop"
    assert yaml_of(pod.comfyui).read_bytes() == yaml_before
    assert not temps(pod.root, target)
    for key, digest in loads.items():           # ComfyUI loads what it loaded before
        p = resolve(pod.comfyui, key)
        assert p is not None and xxh(p) == digest, key
    [log] = run_logs(target)
    records = read_log(str(log))[0]
    assert records[-1]["type"] == "stopped" and not any(r["type"] == "close" for r in records)

    monkeypatch.undo()      # room again: run continues the same run
    rep = execute_plan(_plan(pod.comfyui, target), ["test"])
    assert rep.resumed and rep.run_id == records[0]["run"], rep
    assert [str(p) for p in run_logs(target)] == [str(log)]
    assert read_log(str(log))[0][-1]["type"] == "close"
    assert not temps(pod.root, target)
    assert_resolves_in_target(pod.comfyui, target, expected, skip)


def _run_until_full(pod, target: Path, monkeypatch, limit: int):
    """execute_plan with the target full after `limit` bytes; returns (report or None, exception or None)."""
    from migrate.app.execute import execute_plan
    plan = _plan(pod.comfyui, target)
    _fill_target_after(monkeypatch, target, limit, per_file=False)
    from migrate.core.errors import NoSpace
    try:
        return execute_plan(plan, ["test"]), None
    except (OSError, NoSpace) as exc:
        return None, exc


def test_disk_full_stays_full_keeps_every_source(pod, other_fs, monkeypatch):
    """The target is full after 1 MiB (before the YAML backup fits): whatever happens to the run,
    no source of a file that did not reach the target is quarantined and no source byte changes."""
    target = copy_target(pod, other_fs / "models")
    before = {rel: xxh(p) for rel, p in files_under(str(pod.models)).items()}
    yaml_before = yaml_of(pod.comfyui).read_bytes()
    rep, exc = _run_until_full(pod, target, monkeypatch, 1 << 20)
    placed = all_digests(target)
    for rel, digest in before.items():
        src = pod.models / rel
        quarantined = list((pod.models / STATE_DIR).glob(f"quarantine/*/{rel}"))
        assert any(os.path.isfile(p) and xxh(p) == digest for p in [src, *quarantined]), rel
        if digest not in placed:
            assert src.is_file() and not src.is_symlink() and xxh(src) == digest and not quarantined, rel
    if exc is not None:     # the run stopped: the YAML and every source must be as they were
        assert yaml_of(pod.comfyui).read_bytes() == yaml_before
        assert not (pod.models / STATE_DIR).exists()
    assert not temps(pod.root, *[p for p in target.iterdir() if p.name != STATE_DIR])


def test_disk_full_stays_full_stops_with_exit_4_and_leaves_no_temp(pod, other_fs, monkeypatch):
    """A target that fills for good stops the run (exit 4, both ways on named), leaving no temporary
    and its log open for `run` to continue. Before: the failures were reported and the log closed."""
    from migrate.core.errors import NoSpace
    target = copy_target(pod, other_fs / "models")
    rep, exc = _run_until_full(pod, target, monkeypatch, 1 << 20)
    assert not temps(pod.root, target), temps(pod.root, target)
    assert isinstance(exc, NoSpace) and exc.exit_code == 4, f"execute_plan gave {rep or exc!r}"
    assert "`comfy-migrate run` (continues this run)" in exc.hint, exc.hint
    [log] = run_logs(target)
    assert read_log(str(log))[0][-1]["type"] != "close"


# --- 8. a source changed between plan and run ----------------------------------------------------------

@pytest.mark.parametrize("fs", ["same", "cross"])
def test_source_changed_after_plan_is_kept(pod, request, fs):
    from migrate.app.execute import execute_plan
    if fs == "cross":
        target = copy_target(pod, request.getfixturevalue("other_fs") / "models")
    else:
        target = pod.target
    expected = original_models(pod.comfyui)
    skip = conflicts(target, expected)
    plan = _plan(pod.comfyui, target)
    rel = "loras/lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors"
    changed = pod.models / rel
    with open(changed, "r+b") as f:
        f.seek(100)
        f.write(b"edited")
    new_digest = xxh(changed)

    rep = execute_plan(plan, ["test"])

    assert [p.path for p in rep.problems] == [str(changed)]
    assert changed.is_file() and not changed.is_symlink() and xxh(changed) == new_digest
    assert not (target / rel).exists()
    assert not list((pod.models / STATE_DIR).glob(f"quarantine/*/{rel}"))
    key = ("loras", rel.split("/", 1)[1])
    assert resolve(pod.comfyui, key) == str(changed)       # still loads, from the source
    assert_resolves_in_target(pod.comfyui, target, expected, skip | {key})
    assert not temps(pod.root, target)


# --- 9. the target lock -------------------------------------------------------------------------------

def _write_lock(target: Path, pid: int) -> None:
    from migrate.disk.lock import boot_id, pid_namespace
    sd = target / STATE_DIR
    sd.mkdir(parents=True, exist_ok=True)
    (sd / "lock").write_text(json.dumps({"host": socket.gethostname(), "boot_id": boot_id(), "pidns": pid_namespace(), "pid": pid,
                                         "started": "x", "purpose": "test"}))


def test_lock_held_by_live_process_refuses(pod, cli_env):
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        _write_lock(pod.target, sleeper.pid)
        before = snapshot_tree(pod.comfyui)
        models_before = {k: v for k, v in snapshot_tree(pod.target).items() if not k.startswith(STATE_DIR)}
        proc = run_cli(run_args(pod.comfyui, pod.target, "--yes", "--wait", "0"), cli_env, check=5)
        assert str(sleeper.pid) in proc.stderr
        assert snapshot_tree(pod.comfyui) == before
        assert {k: v for k, v in snapshot_tree(pod.target).items() if not k.startswith(STATE_DIR)} == models_before
        assert json.loads((pod.target / STATE_DIR / "lock").read_text())["pid"] == sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()


def test_lock_of_dead_process_is_taken_over(pod, cli_env):
    sleeper = subprocess.Popen(["sleep", "30"])
    sleeper.kill()
    sleeper.wait()
    _write_lock(pod.target, sleeper.pid)
    expected = original_models(pod.comfyui)
    proc = run_leaving_conflicts(run_args(pod.comfyui, pod.target, "--yes")[1:], cli_env)
    assert "stale lock" in proc.stderr
    assert_resolves_in_target(pod.comfyui, pod.target, expected, conflicts(pod.target, expected))
    assert not (pod.target / STATE_DIR / "lock").exists()
    check_logs(pod.target)


def test_history_counts_files_a_run_found_already_stored(tmp_path, cli_env):
    # A pod rebuilt from a template whose models are all in the store already: the run places
    # nothing, yet every name now loads from the store; history must not say "0 files / 0 B".
    comfy = tmp_path / "ComfyUI"
    (comfy / "models" / "loras").mkdir(parents=True)
    (comfy / "main.py").write_text("")
    (tmp_path / "store" / "loras").mkdir(parents=True)
    for n in range(3):
        data = as_model("x.safetensors", bytes([n]) * 5000)
        (comfy / "models" / "loras" / f"m{n}.safetensors").write_bytes(data)
        (tmp_path / "store" / "loras" / f"m{n}.safetensors").write_bytes(data)
    run_cli(["run", "--comfyui", comfy, "--target", tmp_path / "store", "--yes"], cli_env)
    (row,) = json.loads(run_cli(["history", "--target", tmp_path / "store", "--format", "json"], cli_env).stdout)
    assert (row["files"], row["placed"], row["relied"]) == (3, 0, 3) and row["bytes"] > 15000
    table = run_cli(["history", "--target", tmp_path / "store"], cli_env).stdout
    assert "3 (3 already stored)" in table


def test_every_step_acts_only_after_its_log_is_durable(pod, other_fs, monkeypatch):
    """"done" records are not fsynced on their own (a round trip each on a network volume): the
    next begin's fsync makes them durable. Every change to a model, folder or source happens with
    the whole log fsynced up to its own begin record (write-ahead)."""
    from migrate.disk import journal
    from migrate.app.execute import execute_plan
    target = copy_target(pod, other_fs / "models")
    plan = _plan(pod.comfyui, target)
    state = {"dirty": False, "acts": 0, "unsynced": 0}
    append = journal.Journal.append

    def spy(self, rec, sync=True):
        state["dirty"] = not sync
        state["unsynced"] += not sync
        return append(self, rec, sync)
    monkeypatch.setattr(journal.Journal, "append", spy)

    def guard(name):
        real = getattr(os, name)

        def call(*args, **kw):
            paths = [os.fsdecode(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
            if any(f"/{STATE_DIR}/" not in p or f"/{STATE_DIR}/quarantine" in p for p in paths):
                assert not state["dirty"], f"{name}{tuple(paths)} before the log was fsynced"
                state["acts"] += 1
            return real(*args, **kw)
        monkeypatch.setattr(os, name, call)
    for name in ("mkdir", "rename", "link", "symlink", "unlink", "replace"):
        guard(name)
    # Publishes and quarantines go through libc's renameat2 (RENAME_NOREPLACE), not os.rename:
    # guard it too, or the copy's publish and every source's quarantine would go unchecked.
    from migrate.disk import fsops
    real_renameat2 = fsops._renameat2()
    assert real_renameat2 is not None, "this test needs renameat2 (Linux, glibc >= 2.28)"
    renames = []

    def renameat2(olddirfd, old, newdirfd, new, flags):
        paths = [os.fsdecode(old), os.fsdecode(new)]
        if any(f"/{STATE_DIR}/" not in p or f"/{STATE_DIR}/quarantine" in p for p in paths):
            assert not state["dirty"], f"renameat2{tuple(paths)} before the log was fsynced"
            state["acts"] += 1
            renames.append(paths[1])
        return real_renameat2(olddirfd, old, newdirfd, new, flags)
    monkeypatch.setattr(fsops, "_renameat2", lambda: renameat2)

    rep = execute_plan(plan, ["test"])
    assert rep.ok and rep.copied_bytes and state["acts"] and state["unsynced"]
    # The key cases were checked: a copy published into the target, a source set aside in quarantine.
    assert any(f"/{STATE_DIR}/quarantine/" in p for p in renames), renames
    assert any(str(target) in p and STATE_DIR not in p for p in renames), renames
