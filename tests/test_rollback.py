"""rollback, history, purge and verify from the audit log (issue 4), end to end through the CLI.

Every test works on real trees in temporary folders and runs `python -m migrate` as a subprocess
with all state (HOME, XDG_*, the digest cache) inside the test's tmp_path. The central check is a
snapshot of the ComfyUI folder and the target (the target's own `.comfy-migrate/` state excluded):
every file and symlink with its type, xxh3-128 digest, mode, mtime_ns and symlink target, the set of
folders, and the YAML's bytes. "Rolled back" means: the snapshot equals the one taken before the run.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import as_model, make_pod, run_cli, run_leaving_conflicts
from migrate.disk.journal import _canonical, _sum

STATE = ".comfy-migrate"
KILLED = -9


# --- snapshots ---------------------------------------------------------------------------------------

def snapshot(comfyui, target, yaml_path=None) -> dict:
    """Files/symlinks (type, digest, mode, mtime_ns, link target) and folders of both trees + YAML bytes.

    Keys are "C:<rel>" (under the ComfyUI folder) and "T:<rel>" (under the target, without its
    state folder). The roots themselves are not entries.
    """
    entries: Dict[str, tuple] = {}
    dirs = set()

    def walk(root: str, label: str, rel: str) -> None:
        path = os.path.join(root, rel) if rel else root
        try:
            names = sorted(os.listdir(path))
        except FileNotFoundError:
            return
        for name in names:
            erel = f"{rel}/{name}" if rel else name
            if label == "T" and erel == STATE:
                continue
            full = os.path.join(root, erel)
            s = os.lstat(full)
            if stat.S_ISDIR(s.st_mode):
                dirs.add(f"{label}:{erel}")
                walk(root, label, erel)
            elif stat.S_ISLNK(s.st_mode):
                entries[f"{label}:{erel}"] = ("symlink", None, stat.S_IMODE(s.st_mode), s.st_mtime_ns,
                                              os.readlink(full))
            elif stat.S_ISREG(s.st_mode):
                with open(full, "rb") as f:
                    digest = xxhash.xxh3_128(f.read()).hexdigest()
                entries[f"{label}:{erel}"] = ("file", digest, stat.S_IMODE(s.st_mode), s.st_mtime_ns, None)
            else:
                entries[f"{label}:{erel}"] = ("special", None, stat.S_IMODE(s.st_mode), s.st_mtime_ns, None)

    walk(str(comfyui), "C", "")
    walk(str(target), "T", "")
    yaml_path = str(yaml_path or os.path.join(str(comfyui), "extra_model_paths.yaml"))
    try:
        with open(yaml_path, "rb") as f:
            yaml_bytes: Optional[bytes] = f.read()
    except FileNotFoundError:
        yaml_bytes = None
    return {"entries": entries, "dirs": dirs, "yaml": yaml_bytes}


def assert_same(before: dict, after: dict, what: str = "") -> None:
    """Equal snapshots, with a readable difference when not."""
    if before == after:
        return
    lines = []
    b, a = before["entries"], after["entries"]
    for k in sorted(set(b) | set(a)):
        if b.get(k) != a.get(k):
            lines.append(f"  {k}: before {b.get(k)} after {a.get(k)}")
    for d in sorted(before["dirs"] - after["dirs"]):
        lines.append(f"  folder gone: {d}")
    for d in sorted(after["dirs"] - before["dirs"]):
        lines.append(f"  folder added: {d}")
    if before["yaml"] != after["yaml"]:
        lines.append(f"  YAML before {before['yaml']!r}\n  YAML after {after['yaml']!r}")
    pytest.fail(f"snapshot differs {what}:\n" + "\n".join(lines))


# --- a small pod (fast enough to run many times) -------------------------------------------------------

USER_YAML = ("# my own paths\nother_ui:\n  base_path: /opt/other\n"
             "  checkpoints: models/Stable-diffusion\n  clip: models/clip\n")
BASE_NS = 1_650_000_000_123_456_789


# rel under ComfyUI/models -> (content seed, size, mode); same seed = same bytes (a duplicate)
SMALL_FILES = {
    "checkpoints/base.safetensors": ("A", 3000, 0o644),
    "loras/style.safetensors": ("B", 2048, 0o600),
    "loras/more/style_copy.safetensors": ("B", 2048, 0o640),      # duplicate of style
    "clip/te.safetensors": ("C", 1500, 0o644),                      # legacy clip folder
    "unet/big.safetensors": ("D", 4100, 0o755),                     # legacy unet folder
    "my_nodes/detector.pt": ("E", 900, 0o644),                      # custom-node folder (link back)
}
SMALL_TARGET = {
    "checkpoints/base.safetensors": ("A", 3000, 0o644),             # already there (another inode)
}


class Small:
    def __init__(self, base: Path, target: Optional[Path] = None) -> None:
        self.comfyui = base / "ComfyUI"
        self.models = self.comfyui / "models"
        self.target = target if target is not None else base / "store"
        self.yaml = self.comfyui / "extra_model_paths.yaml"
        # valid model files (safetensors, a torch zip for .pt): the audit holds back anything else
        for i, (rel, (seed, size, mode)) in enumerate(sorted(SMALL_FILES.items())):
            _write(self.models / rel, make_pod.model_bytes(rel, size, seed), mode, BASE_NS + i * 1_000_003)
        for i, (rel, (seed, size, mode)) in enumerate(sorted(SMALL_TARGET.items())):
            _write(self.target / rel, make_pod.model_bytes(rel, size, seed), mode, BASE_NS - (i + 1) * 7_000_001)
        _write(self.models / "loras" / "put_loras_here", b"", 0o644, BASE_NS)
        os.symlink("../loras/style.safetensors", self.models / "my_nodes" / "alias.safetensors")
        _write(self.yaml, USER_YAML.encode(), 0o644, BASE_NS + 42)

    def args(self, *extra) -> list:
        return ["--comfyui", str(self.comfyui), "--target", str(self.target), *extra]

    def snap(self) -> dict:
        return snapshot(self.comfyui, self.target, self.yaml)

    def run_log(self) -> Path:
        logs = [p for p in (self.target / STATE / "runs").glob("*.jsonl") if not p.name.endswith(".rollback.jsonl")]
        assert len(logs) == 1, logs
        return logs[0]


def _write(path: Path, data: bytes, mode: int, mtime_ns: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def _shm_dir() -> str:
    """A fresh folder on /dev/shm on another filesystem than /tmp-style test folders; skip if none."""
    shm = "/dev/shm"
    if not os.path.isdir(shm) or not os.access(shm, os.W_OK | os.X_OK):
        pytest.skip("no writable /dev/shm to serve as a second filesystem")
    if os.stat(shm).st_dev == os.stat(tempfile.gettempdir()).st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the temp folder: no second filesystem here")
    return tempfile.mkdtemp(prefix="cm-rollback-", dir=shm)


@pytest.fixture
def shm_dir(tmp_path):
    if os.path.isdir("/dev/shm") and os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same filesystem as tmp_path: no second filesystem here")
    d = _shm_dir()
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=["same-fs", "cross-fs"])
def small(request, tmp_path) -> Small:
    if request.param == "same-fs":
        return Small(tmp_path / "pod")
    shm = request.getfixturevalue("shm_dir")
    return Small(tmp_path / "pod", shm / "store")


def rollback(env, target, *extra, check=0):
    return run_cli(["rollback", "--target", str(target), *extra], env, check=check)


def run(env, pod, *extra, check=0):
    return run_cli(["run", *pod.args("--yes", *extra)], env, check=check)


def crash_env(env, n: int) -> dict:
    return dict(env, COMFY_MIGRATE_CRASH_AT=str(n))


def assert_nothing_left(res) -> None:
    """A rollback when every run is rolled back already: says so, exit 6 (no run) or 0 (nothing done)."""
    assert (res.returncode, "no run to roll back" in res.stderr) == (6, True) or \
        (res.returncode, "rolled back already" in res.stderr + res.stdout) == (0, True), \
        f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"


def read_records(log: Path) -> List[dict]:
    return [json.loads(line) for line in log.read_bytes().split(b"\n") if line]


# --- 1. run then rollback ------------------------------------------------------------------------------

def _demo_pod(tmp_path: Path, target_dir: Optional[Path]):
    comfyui, target = make_pod.build(str(tmp_path / "pod"))
    comfyui, target = Path(comfyui).resolve(), Path(target).resolve()
    if target_dir is not None:
        shutil.copytree(target, target_dir, symlinks=True)
        shutil.rmtree(target)
        target = target_dir
    return comfyui, target


@pytest.mark.parametrize("fs", ["same-fs", "cross-fs"])
@pytest.mark.parametrize("purge", [False, True], ids=["", "purged"])
@pytest.mark.slow
def test_run_then_rollback_restores_everything(request, tmp_path, cli_env, fs, purge):
    target_dir = request.getfixturevalue("shm_dir") / "models" if fs == "cross-fs" else None
    comfyui, target = _demo_pod(tmp_path, target_dir)
    args = ["--comfyui", str(comfyui), "--target", str(target)]
    before = snapshot(comfyui, target)

    run_leaving_conflicts([*args, "--yes"], cli_env)
    after_run = snapshot(comfyui, target)
    assert after_run != before
    run_id = run_cli(["history", "--target", str(target), "--format", "json"], cli_env)
    rows = json.loads(run_id.stdout)
    assert [r["state"] for r in rows] == ["complete"]
    run_id = rows[0]["run"]

    if purge:
        quarantine = comfyui / "models" / STATE / "quarantine" / run_id
        assert quarantine.is_dir() and any(p.is_file() for p in quarantine.rglob("*")), \
            "the demo pod should quarantine something (already-there files, cross-fs copies)"
        run_cli(["purge", "--target", str(target), "--permanent", "--yes"], cli_env)
        assert not any(p.is_file() for p in quarantine.rglob("*"))

    res = rollback(cli_env, target, "--yes")
    assert "rolled back" in res.stdout
    assert_same(before, snapshot(comfyui, target), "after run + rollback")

    hist = run_cli(["history", "--target", str(target)], cli_env)
    assert run_id in hist.stdout and "rolled back" in hist.stdout
    rows = json.loads(run_cli(["history", "--target", str(target), "--format", "json"], cli_env).stdout)
    assert [(r["run"], r["state"]) for r in rows] == [(run_id, "rolled back")]

    # Nothing left to roll back by default; naming the run again does nothing.
    assert_nothing_left(rollback(cli_env, target, "--yes", check=None))
    again = rollback(cli_env, target, run_id, "--yes", check=None)
    assert again.returncode in (0, 6), again.stderr
    assert_same(before, snapshot(comfyui, target), "after a second rollback")


# --- 2. property: generated trees round-trip -----------------------------------------------------------

FOLDERS = ["checkpoints", "loras", "unet", "diffusion_models", "clip", "text_encoders", "my_custom_nodes"]
TARGET_FOLDERS = ["checkpoints", "loras", "diffusion_models", "text_encoders", "unet", "my_custom_nodes"]
NAMES = ["a.safetensors", "b.safetensors", "c.pt", "sub/d.safetensors"]
MODES = [0o644, 0o600, 0o640, 0o755]
mtimes = st.integers(1_000_000_000, 1_900_000_000).flatmap(
    lambda s: st.integers(0, 999_999_999).map(lambda ns: s * 1_000_000_000 + ns))


@st.composite
def trees(draw):
    pool = draw(st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=4, unique=True))
    content = st.integers(0, len(pool) - 1).map(lambda i: pool[i])
    keys = draw(st.lists(st.tuples(st.sampled_from(FOLDERS), st.sampled_from(NAMES)),
                         min_size=1, max_size=7, unique=True))
    files = {f"{folder}/{name}": (draw(content), draw(st.sampled_from(MODES)), draw(mtimes))
             for folder, name in keys}
    if draw(st.booleans()):      # a deliberate duplicate of the first file's content
        first = files[f"{keys[0][0]}/{keys[0][1]}"]
        files["loras/dup/copy.safetensors"] = (first[0], draw(st.sampled_from(MODES)), draw(mtimes))
    pre = draw(st.lists(st.tuples(st.sampled_from(TARGET_FOLDERS), st.sampled_from(NAMES),
                                  st.one_of(content, st.binary(min_size=1, max_size=200)),
                                  st.sampled_from(MODES), mtimes),
                        max_size=3, unique_by=lambda t: (t[0], t[1])))
    target_files = {f"{folder}/{name}": (data, mode, mt) for folder, name, data, mode, mt in pre}
    yaml_text = draw(st.sampled_from([None, USER_YAML, USER_YAML + "\n# trailing comment\n"]))
    target_exists = bool(target_files) or draw(st.booleans())
    return files, target_files, yaml_text, target_exists


def _roundtrip(tree, env, base: str, target_base: str) -> None:
    files, target_files, yaml_text, target_exists = tree
    comfyui = Path(base) / "ComfyUI"
    target = Path(target_base) / "store"
    (comfyui / "models").mkdir(parents=True)
    for rel, (data, mode, mt) in files.items():
        _write(comfyui / "models" / rel, as_model(rel, data), mode, mt)
    if target_exists:
        target.mkdir()
    for rel, (data, mode, mt) in target_files.items():
        _write(target / rel, as_model(rel, data), mode, mt)
    yaml_path = comfyui / "extra_model_paths.yaml"
    if yaml_text is not None:
        _write(yaml_path, yaml_text.encode(), 0o640, 1_234_567_890_987_654_321)
    env = dict(env, COMFY_MIGRATE_CACHE=os.path.join(base, "digests.sqlite"))
    before = snapshot(comfyui, target, yaml_path)
    res = run_cli(["run", "--comfyui", str(comfyui), "--target", str(target), "--yes"], env, check=None)
    # exit 1 exactly when files stayed where they are, and then only conflicts (the store's other
    # content at their name): a generated pod holds no broken or unreadable file
    stayed = re.search(r"(\d+) model file\(s\) stayed where they are, not in the store \((\d+) conflict; ", res.stderr)
    assert (res.returncode, bool(stayed)) in ((0, False), (1, True)), res.stderr
    assert not stayed or stayed.group(1) == stayed.group(2), res.stderr
    if "nothing to do" not in res.stderr:
        rollback(env, target, "--yes")
    assert_same(before, snapshot(comfyui, target, yaml_path), "after run + rollback")


_PROPERTY = settings(max_examples=15, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                            HealthCheck.data_too_large])


@pytest.mark.slow
@_PROPERTY
@given(tree=trees())
def test_property_roundtrip_same_fs(cli_env, tmp_path, tree):
    base = tempfile.mkdtemp(dir=str(tmp_path))
    try:
        _roundtrip(tree, cli_env, base, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
@settings(_PROPERTY, max_examples=10)
@given(tree=trees())
def test_property_roundtrip_cross_fs(cli_env, tmp_path, tree):
    if os.path.isdir("/dev/shm") and os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same filesystem as tmp_path: no second filesystem here")
    base = tempfile.mkdtemp(dir=str(tmp_path))
    shm = _shm_dir()
    try:
        _roundtrip(tree, cli_env, base, shm)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)


# --- 3. kill -9 during rollback (and during the run) --------------------------------------------------
#
# Each crash point gets its own freshly built small pod (own folders, own digest cache), and the
# points run a few at a time in threads: each one is a chain of CLI subprocesses on its own trees.

def _count_records(base: Path, target: Optional[Path], env, of_rollback: bool) -> int:
    """Records of a clean run's log, or of a clean rollback's log, measured on a twin pod."""
    twin = Small(base, target)
    run(env, twin)
    if not of_rollback:
        return len(read_records(twin.run_log()))
    rollback(env, twin.target, "--yes")
    log = twin.run_log()
    n = len(read_records(log.with_name(log.stem + ".rollback.jsonl")))
    assert n > 10
    return n


def _sweep(points, one) -> None:
    """one(n) for every crash point, concurrently; fails naming the first point that went wrong."""
    from concurrent.futures import ThreadPoolExecutor
    failures = []

    def guarded(n):
        try:
            one(n)
        except BaseException as exc:   # an assertion inside a worker thread: collect it
            failures.append((n, exc))

    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        list(pool.map(guarded, points))
    if failures:
        failures.sort(key=lambda f: f[0])
        n, exc = failures[0]
        pytest.fail(f"{len(failures)} of {len(points)} crash points failed, "
                    f"points {[f[0] for f in failures]}; first (at record {n}):\n{exc}")


def _points(total: int, stride: int) -> List[int]:
    return sorted(set(range(1, total + 1, stride)) | {total})


def _sweep_dirs(request, tmp_path: Path, fs: str):
    shm = request.getfixturevalue("shm_dir") if fs == "cross-fs" else None

    def dirs(name: str) -> Tuple[Path, Optional[Path]]:
        return tmp_path / name, (shm / name / "store" if shm else None)

    return dirs


def _cleanup(base: Path, target: Optional[Path]) -> None:
    shutil.rmtree(base, ignore_errors=True)
    if target is not None:
        shutil.rmtree(target.parent, ignore_errors=True)


# Every record of the rollback's log on one filesystem; every fifth across two (to stay fast).
@pytest.mark.slow
@pytest.mark.parametrize("fs,stride", [("same-fs", 1), ("cross-fs", 5)])
def test_kill_during_rollback_then_rollback_again(request, tmp_path, cli_env, fs, stride):
    dirs = _sweep_dirs(request, tmp_path, fs)
    total = _count_records(*dirs("twin"), cli_env, of_rollback=True)

    def one(n: int) -> None:
        base, target = dirs(f"p{n}")
        env = dict(cli_env, COMFY_MIGRATE_CACHE=str(base / "digests.sqlite"))
        pod = Small(base, target)
        before = pod.snap()
        run(env, pod)
        res = rollback(crash_env(env, n), pod.target, "--yes", check=None)
        assert res.returncode == KILLED, f"crash at {n}: exit {res.returncode}\n{res.stderr}"
        again = rollback(env, pod.target, "--yes", check=None)
        if n == total:      # killed right after the closing record: the rollback was complete
            assert_nothing_left(again)
        else:
            assert again.returncode == 0, f"rollback after a crash at {n}: exit {again.returncode}\n{again.stderr}"
        assert_same(before, pod.snap(), f"after a rollback killed at record {n} and run again")
        if n in (1, total // 2, total):
            hist = run_cli(["history", "--target", str(pod.target), "--format", "json"], env)
            assert [r["state"] for r in json.loads(hist.stdout)] == ["rolled back"], hist.stdout
        _cleanup(base, target)

    _sweep(_points(total, stride), one)


# Every fifth record of the run's log on one filesystem, every seventh across two (odd strides hit
# both begin and done records).
@pytest.mark.slow
@pytest.mark.parametrize("fs,stride", [("same-fs", 5), ("cross-fs", 7)])
def test_kill_during_run_then_rollback(request, tmp_path, cli_env, fs, stride):
    dirs = _sweep_dirs(request, tmp_path, fs)
    total = _count_records(*dirs("twin"), cli_env, of_rollback=False)

    def one(n: int) -> None:
        base, target = dirs(f"p{n}")
        env = dict(cli_env, COMFY_MIGRATE_CACHE=str(base / "digests.sqlite"))
        pod = Small(base, target)
        before = pod.snap()
        res = run(crash_env(env, n), pod, check=None)
        assert res.returncode == KILLED, f"crash at {n}: exit {res.returncode}\n{res.stderr}"
        rollback(env, pod.target, "--yes")
        assert_same(before, pod.snap(), f"after a run killed at record {n}, then rollback")
        _cleanup(base, target)

    _sweep(_points(total, stride), one)


# --- 4. tampered logs ----------------------------------------------------------------------------------

def _lines(log: Path) -> List[bytes]:
    data = log.read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def _reseal(records: List[dict], start: int) -> List[bytes]:
    """Recompute sum (and the following records' prev chain) from index `start` on, as the writer would."""
    for i in range(start, len(records)):
        rec = dict(records[i])
        if i > 0:
            rec["prev"] = records[i - 1]["sum"]
        rec.pop("sum", None)
        rec["sum"] = _sum(rec)
        records[i] = rec
    return [_canonical(r) for r in records]


def _middle_with(records: List[dict], field: str) -> int:
    """Index of a record near the middle of the log that carries `field`."""
    idx = [i for i, r in enumerate(records) if field in r and r.get("type") == "begin"]
    assert idx
    return idx[len(idx) // 2]


def _edit_path(lines, records):
    i = _middle_with(records, "dst")
    rec = dict(records[i], dst=records[i]["dst"] + ".x")        # sum left as it was
    lines[i] = _canonical(rec)
    return lines, i + 1, "altered"


def _remove_line(lines, records):
    i = len(lines) // 2
    del lines[i]
    return lines, i + 1, "missing"


def _swap_lines(lines, records):
    i = len(lines) // 2
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    return lines, i + 1, "out of order"


def _foreign_path(lines, records):
    i = _middle_with(records, "dst")
    records[i] = dict(records[i], dst="/etc/passwd")
    return _reseal(records, i), i + 1, "outside"


def _foreign_dotdot(lines, records):
    i = _middle_with(records, "src")
    records[i] = dict(records[i], src=records[0]["target"] + "/../../etc/passwd")
    return _reseal(records, i), i + 1, "outside"


def _unknown_version(lines, records):
    records[0] = dict(records[0], v=99)
    return _reseal(records, 0), 1, "version"


def _missing_field(lines, records):
    i = _middle_with(records, "ino")        # sealed again: only the undo's reading of the field finds it
    records[i] = {k: v for k, v in records[i].items() if k != "ino"}
    return _reseal(records, i), i + 1, "has no ino"


def _wrong_type(lines, records):
    i = _middle_with(records, "size")
    records[i] = dict(records[i], size=str(records[i]["size"]))
    return _reseal(records, i), i + 1, "size is str, not int"


TAMPERS = {"missing-field": _missing_field, "wrong-type": _wrong_type, "edited-path": _edit_path, "removed-line": _remove_line, "swapped-lines": _swap_lines,
           "foreign-path": _foreign_path, "dotdot-path": _foreign_dotdot, "unknown-version": _unknown_version}


@pytest.mark.parametrize("how", list(TAMPERS))
def test_tampered_log_is_refused_and_changes_nothing(tmp_path, cli_env, how):
    pod = Small(tmp_path / "pod")
    run(cli_env, pod)
    log = pod.run_log()
    records = read_records(log)
    lines, line_no, word = TAMPERS[how](_lines(log), records)
    log.write_bytes(b"\n".join(lines) + b"\n")
    passwd = os.stat("/etc/passwd")
    before = pod.snap()
    for args in (["--yes"], [log.stem, "--yes"], [str(log), "--yes"]):
        res = rollback(cli_env, pod.target, *args, check=6)
        assert re.search(rf"line {line_no}\b", res.stderr), res.stderr
        assert word in res.stderr, res.stderr
        assert_same(before, pod.snap(), f"after a refused rollback of a log with {how}")
    assert not list((pod.target / STATE / "runs").glob("*.rollback.jsonl"))
    after = os.stat("/etc/passwd")
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (passwd.st_ino, passwd.st_mtime_ns, passwd.st_size)


def test_torn_final_line_is_accepted(tmp_path, cli_env):
    pod = Small(tmp_path / "pod")
    before = pod.snap()
    run(cli_env, pod)
    with open(pod.run_log(), "ab") as f:
        f.write(b'{"type":"be')
    rollback(cli_env, pod.target, "--yes")
    assert_same(before, pod.snap(), "after rolling back a log with a torn final line")


# --- 5. a file changed after the run -------------------------------------------------------------------

def _changed_case(small: Small, env, in_place: bool):
    before = small.snap()
    run(env, small)
    dst = small.target / "text_encoders" / "te.safetensors"
    src_key, dst_key = "C:models/clip/te.safetensors", "T:text_encoders/te.safetensors"
    new = b"the user's own fine-tune" * 50
    if in_place:
        with open(dst, "r+b") as f:       # same inode, other bytes
            f.write(new)
            f.truncate()
    else:
        tmp = dst.with_name("incoming")
        tmp.write_bytes(new)
        os.replace(tmp, dst)
    res = rollback(env, small.target, "--yes", check=1)
    assert "te.safetensors" in res.stderr and "not undone" in res.stderr, res.stderr
    assert dst.read_bytes() == new, "the changed file must be kept in the target"
    after = small.snap()
    want = {k: v for k, v in before["entries"].items() if k != src_key}
    got = {k: v for k, v in after["entries"].items() if k not in (src_key, dst_key)}
    assert_same(dict(before, entries=want), dict(after, entries=got, dirs=after["dirs"] - {"T:text_encoders"}),
                "apart from the changed file")
    # The old name comes back only with its original bytes (cross-fs: from the quarantine).
    assert after["entries"].get(src_key, before["entries"][src_key]) == before["entries"][src_key]


def test_changed_file_is_kept_and_the_rest_restored(small, cli_env):
    _changed_case(small, cli_env, in_place=False)


@pytest.mark.parametrize("fs", ["same-fs", "cross-fs"])
def test_file_rewritten_in_place_is_kept(request, tmp_path, cli_env, fs):
    shm = request.getfixturevalue("shm_dir") if fs == "cross-fs" else None
    pod = Small(tmp_path / "pod", shm / "store" if shm else None)
    _changed_case(pod, cli_env, in_place=True)


# --- 6. dry run and confirmation -----------------------------------------------------------------------

def test_dry_run_changes_nothing_and_no_tty_refuses(tmp_path, cli_env):
    pod = Small(tmp_path / "pod")
    run(cli_env, pod)
    state_before = snapshot(pod.target / STATE, tmp_path / "nowhere")
    before = pod.snap()
    res = rollback(cli_env, pod.target, "--dry-run")
    assert "rollback of run" in res.stdout
    assert "move" in res.stdout or "remove" in res.stdout
    assert "restore" in res.stdout and "extra_model_paths.yaml" in res.stdout
    steps = [line for line in res.stdout.splitlines() if line.startswith("  ")]
    assert len(steps) >= len(SMALL_FILES)
    assert_same(before, pod.snap(), "after rollback --dry-run")

    res = rollback(cli_env, pod.target, check=7)
    assert "--yes" in res.stderr
    assert_same(before, pod.snap(), "after rollback without --yes and no terminal")
    # Neither wrote a rollback log or touched the state folder (the lock included).
    assert_same(state_before, snapshot(pod.target / STATE, tmp_path / "nowhere"), "in the state folder")


# --- 7. verify -----------------------------------------------------------------------------------------

def test_verify_after_run_missing_and_shadowed(tmp_path, cli_env):
    pod = Small(tmp_path / "pod")
    run(cli_env, pod)
    verify = ["verify", "--comfyui", str(pod.comfyui), "--target", str(pod.target)]
    res = run_cli(verify, cli_env)
    assert "all good" in res.stdout
    doc = json.loads(run_cli([*verify, "--format", "json"], cli_env).stdout)
    assert doc["ok"] and doc["checked"] >= 5

    # Another file of the same name earlier in ComfyUI's search order wins the name: shadowed.
    shadow = tmp_path / "elsewhere"
    _write(shadow / "loras" / "style.safetensors", b"another lora", 0o644, BASE_NS)
    text = pod.yaml.read_text()
    pod.yaml.write_text(text + f"\nmine:\n  base_path: {shadow}\n  is_default: true\n  loras: loras\n")
    res = run_cli(verify, cli_env, check=8)
    assert re.search(r"shadowed: .*loras/style\.safetensors", res.stdout), res.stdout
    pod.yaml.write_text(text)
    run_cli(verify, cli_env)

    gone = pod.target / "text_encoders" / "te.safetensors"
    gone.unlink()
    res = run_cli(verify, cli_env, check=8)
    assert f"missing: {gone}" in res.stdout, res.stdout
    doc = json.loads(run_cli([*verify, "--format", "json"], cli_env, check=8).stdout)
    assert doc["missing"] == [str(gone)] and not doc["ok"]


def test_rollback_removes_the_scratch_folder_of_a_probe_killed_mid_way(pod, cli_env):
    # A SIGKILL while a plan probed the source's filesystem leaves its scratch folder behind (torture
    # seed 5 found one after a rollback): rollback gives the pod back without it.
    import socket
    import subprocess
    from conftest import snapshot_tree
    from migrate.disk.fsops import PROBE_PREFIX
    before = snapshot_tree(pod.root)
    run_leaving_conflicts(pod.args("--yes"), cli_env)
    dead = subprocess.Popen(["true"])
    dead.wait()
    scratch = pod.models / f"{PROBE_PREFIX}{socket.gethostname()}-{dead.pid}-abc123"
    scratch.mkdir()
    (scratch / "c").write_bytes(b"x")
    run_cli(["rollback", *pod.args("--yes")], cli_env)
    assert not scratch.exists()
    def pod_view(snap):      # the YAML comes back by an atomic write: a new inode, all else equal
        return {k: v[:3] + v[4:] for k, v in snap.items() if k.startswith("runpod-slim/")}
    assert pod_view(snapshot_tree(pod.root)) == pod_view(before)


# --- 7. a log that holds no complete record: nothing was done, nothing is blocked -----------------------
#
# Journal before act: a log's first record is on the disk before its first step. A rollback (or run)
# killed while writing it, or refused it by a full disk, did nothing; its log must not block the
# next rollback or run, nor read as "bad log" (a garbled log elsewhere is still refused: section 4).

def _rollback_log(pod: Small) -> Path:
    log = pod.run_log()
    return log.with_name(log.stem + ".rollback.jsonl")


def _states(env, target) -> List[str]:
    hist = run_cli(["history", "--target", str(target), "--format", "json"], env)
    return [r["state"] for r in json.loads(hist.stdout)]


@pytest.mark.parametrize("left", ["torn", "empty"])
@pytest.mark.parametrize("then", ["rollback", "run"])
def test_a_rollback_that_wrote_no_record_blocks_nothing(tmp_path, cli_env, left, then):
    """A run killed mid-way; its rollback SIGKILLed while writing its log's first line (`torn`: half of
    it on the disk; `empty`: none, as a full disk leaves it). Then history names the run's own state,
    `rollback --dry-run` and `rollback` exit 0 (or `run` continues the same run, then rollback), and the
    pod is back byte for byte. Before: history said "bad log", rollback exited 6 ("holds no complete
    record") and `run` started a new run beside the interrupted one."""
    pod = Small(tmp_path / "pod")
    before = pod.snap()
    run(crash_env(cli_env, 9), pod, check=KILLED)
    log = pod.run_log()
    rollback(dict(cli_env, COMFY_MIGRATE_CRASH_AT="torn:1"), pod.target, "--yes", check=KILLED)
    rb = _rollback_log(pod)
    torn = rb.read_bytes()
    assert torn.startswith(b'{"') and b"\n" not in torn, torn
    if left == "empty":
        rb.write_bytes(b"")
    assert _states(cli_env, pod.target) == ["interrupted"]
    if then == "run":
        res = run(cli_env, pod)
        assert "(continued)" in res.stdout, res.stdout
        assert [p.name for p in pod.run_log().parent.glob("*.jsonl") if ".rollback." not in p.name] == [log.name]
        assert _states(cli_env, pod.target) == ["complete"]
    dry = rollback(cli_env, pod.target, "--dry-run")
    assert "rollback of run" in dry.stdout
    rollback(cli_env, pod.target, "--yes")
    assert_same(before, pod.snap(), f"after a rollback torn in its first record ({left}), then {then}")
    assert _states(cli_env, pod.target) == ["rolled back"]
    assert read_records(rb)[0]["type"] == "header"


def test_a_garbled_rollback_log_is_still_refused(tmp_path, cli_env):
    """Only a log cut off inside its first record counts as never written; a rollback log whose first
    line is whole but not a record, or whose partial line is not the start of one, is refused (exit 6)
    with the line named, and nothing changes."""
    pod = Small(tmp_path / "pod")
    run(cli_env, pod)
    rb = _rollback_log(pod)
    for junk in (b"garbage\n", b"not a record"):
        rb.write_bytes(junk)
        after_run = pod.snap()
        res = rollback(cli_env, pod.target, "--yes", check=6)
        assert "line 1" in res.stderr and res.stderr.count("\n") == 1, res.stderr
        assert_same(after_run, pod.snap(), "after a refused rollback")
        assert rb.read_bytes() == junk


def _fill(path: Path) -> None:
    """Write zeros into `path` until its filesystem is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


def _tree(*roots: Path) -> Dict[str, tuple]:
    """Every entry under the roots, roots included, our state folders left out: (kind, mode, mtime_ns,
    digest or link text)."""
    out: Dict[str, tuple] = {}
    for root in roots:
        for dirpath, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != STATE)
            for p in [dirpath] + [os.path.join(dirpath, n) for n in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]]:
                s = os.lstat(p)
                if stat.S_ISREG(s.st_mode):
                    with open(p, "rb") as f:
                        what = xxhash.xxh3_128(f.read()).hexdigest()
                else:
                    what = os.readlink(p) if stat.S_ISLNK(s.st_mode) else None
                out[p] = (stat.S_IFMT(s.st_mode), stat.S_IMODE(s.st_mode), s.st_mtime_ns, what)
    return out


def _one_error_line(res) -> None:
    assert "Traceback" not in res.stderr, res.stderr
    assert len([line for line in res.stderr.splitlines() if "error" in line]) == 1, res.stderr


FILL_HOOK = """
import os
_fill = os.environ.get("CM_TEST_FILL")
if _fill:
    from migrate.disk import fsops
    _write_all = fsops.write_all

    def write_all(fd, data):
        # A copy's first chunk into the store: another writer takes every free byte first. A real
        # full tmpfs answers the copy (ENOSPC), not an injected error.
        if not os.path.exists(_fill) and ".cm-tmp-" in os.readlink(f"/proc/self/fd/{fd}") \\
                and os.fstat(fd).st_dev == os.stat(os.path.dirname(_fill)).st_dev:
            with open(_fill, "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\\0" * 4096)
                except OSError:
                    pass
        return _write_all(fd, data)
    fsops.write_all = write_all
"""


@pytest.mark.parametrize("then", ["rollback", "run"])
@pytest.mark.parametrize("room", ["none", "lock"])
@pytest.mark.slow
def test_a_disk_that_fills_during_the_run(tmp_path, cli_env, then, room):
    """The store is a 1 MiB tmpfs; three 250 KB models fit, but another writer fills the disk as the
    run's first copy starts (issue 20). The run stops: exit 4, one line naming both ways on; every
    model name still loads its bytes (the YAML and the sources as they were). Then, the disk still
    full (`room`: not a page free, or one), `rollback` works (exit 0, was exit 4 on writing the lock)
    and the pod is back exactly: paths, bytes, modes, mtimes (folders too), the YAML. Or space freed,
    `run` continues the SAME run (one log, "(continued)", was a second run), and after the disk
    filled up again one `rollback` undoes all of it. The rollback takes its room from the reserve
    each run keeps in the store's state folder."""
    import subprocess
    from migrate.core import comfy
    store = tmp_path / "store"
    store.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(store)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a 1 MiB tmpfs")
    try:
        comfyui = tmp_path / "ComfyUI"
        models = {f"loras/m{i}.safetensors": as_model(f"m{i}.safetensors", os.urandom(250_000)) for i in (1, 2, 3)}
        for i, (rel, data) in enumerate(sorted(models.items())):
            _write(comfyui / "models" / rel, data, 0o644, BASE_NS + i * 1_000_003)
        _write(comfyui / "main.py", b"", 0o644, BASE_NS)
        for d in (comfyui / "models" / "loras", comfyui / "models", comfyui):
            os.utime(d, ns=(BASE_NS, BASE_NS))
        args = ["--comfyui", str(comfyui), "--target", str(store)]
        before = _tree(comfyui, store)
        hook = tmp_path / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(FILL_HOOK)
        filler = store / "filler"
        fill_env = dict(cli_env, PYTHONPATH=os.pathsep.join(filter(None, (str(hook), cli_env.get("PYTHONPATH")))),
                        CM_TEST_FILL=str(filler))

        def loads_its_bytes() -> None:       # ComfyUI's search order under the YAML now on disk
            yaml_path = comfyui / "extra_model_paths.yaml"
            texts = [(str(yaml_path), yaml_path.read_text())] if yaml_path.exists() else []
            order = comfy.search_folders(texts, str(comfyui / "models"))
            for rel, data in models.items():
                found = [os.path.join(f, rel.split("/", 1)[1]) for f in order["loras"]]
                first = next(p for p in found if os.path.isfile(p))
                assert Path(first).read_bytes() == data, (rel, first)

        def full() -> None:
            _fill(filler)
            if room == "lock":
                os.truncate(filler, os.path.getsize(filler) - 4096)

        first = run_cli(["run", *args, "--yes"], fill_env, check=4)
        _one_error_line(first)
        assert "No space left" in first.stderr, first.stderr
        assert "free space, then `comfy-migrate run` (continues this run) or `comfy-migrate rollback` (undoes it)" \
            in first.stderr, first.stderr
        assert filler.exists(), "the filler never ran"
        assert not (comfyui / "extra_model_paths.yaml").exists(), "the YAML was switched by a stopped run"
        loads_its_bytes()
        assert [s.split(":")[0] for s in _states(cli_env, store)] == ["stopped"], first.stderr
        full()       # a failed copy's temporary was removed: full again

        if then == "run":
            os.unlink(filler)
            again = run_cli(["run", *args, "--yes"], cli_env)
            assert "(continued)" in again.stdout, again.stdout
            assert len(_states(cli_env, store)) == 1
            loads_its_bytes()
            full()
        res = rollback(cli_env, store, *args[:2], "--yes")
        assert "rolled back" in res.stdout and "Traceback" not in res.stderr, res.stderr
        assert _states(cli_env, store) == ["rolled back"]
        assert not (store / STATE / "lock").exists()
        loads_its_bytes()
        os.unlink(filler)
        after = _tree(comfyui, store)
        # The store's own mtime is the one left out: our state folder, made there by the first lock
        # (before the run's first record), stays, logs and all.
        before[str(store)], after[str(store)] = before[str(store)][:2], after[str(store)][:2]
        assert after == before, "\n".join(f"{p}: {before.get(p)} -> {after.get(p)}"
                                          for p in sorted(set(before) | set(after)) if before.get(p) != after.get(p))
    finally:
        subprocess.run(["umount", "-l", str(store)])


# --- issue 20: an in-tree symlink's re-pointing is part of its file's removal -----------------------------

def _removal_of(log: Path, rel: str) -> Tuple[dict, dict]:
    """(begin, done) records of the step that took ComfyUI/models/<rel> from its place."""
    recs = read_records(log)
    begin = next(r for r in recs if r["type"] == "begin" and r.get("op") in ("unlink", "quarantine", "rename")
                 and r.get("src", "").endswith("/models/" + rel))
    done = next(r for r in recs if r["type"] == "done" and r.get("step") == begin["step"])
    return begin, done


@pytest.mark.parametrize("then", ["run", "rollback"])
def test_kill_between_a_removal_and_its_symlink_re_pointing(tmp_path, cli_env, then):
    """my_nodes/alias.safetensors -> ../loras/style.safetensors; the run sets style aside and is
    SIGKILLed right after that step's record, before the link is re-pointed (issue 20). `run` again
    continues the run and re-points the link (it loads style's bytes, from the store), verify says
    all good, and the rollback gives the pod back exactly; or `rollback` at once does. Before: the
    continued run exited 0, verify said "all good", and the link dangled (ComfyUI loads nothing)."""
    twin = Small(tmp_path / "twin")
    run(cli_env, twin)
    begin, done = _removal_of(twin.run_log(), "loras/style.safetensors")
    assert begin.get("links") == [str(twin.models / "my_nodes" / "alias.safetensors")], begin

    pod = Small(tmp_path / "pod")
    alias = pod.models / "my_nodes" / "alias.safetensors"
    data = alias.read_bytes()
    before = pod.snap()
    run(crash_env(cli_env, done["seq"]), pod, check=KILLED)
    assert not os.path.exists(alias), "the kill should come between the removal and the re-pointing"
    if then == "run":
        res = run(cli_env, pod)
        assert "(continued)" in res.stdout, res.stdout
        assert alias.is_symlink() and alias.read_bytes() == data
        assert os.path.realpath(alias).startswith(os.path.realpath(pod.target) + "/")
        assert "all good" in run_cli(["verify", *pod.args()], cli_env).stdout
    rollback(cli_env, pod.target, "--yes")
    assert_same(before, pod.snap(), f"after a kill at record {done['seq']}, then {then}")


def test_verify_finds_an_in_tree_symlink_left_dangling(tmp_path, cli_env):
    """A symlink of the pod whose file a run moved must lead to it: one that dangles (here put back
    to its old text by hand, as a kill between the two steps left it before issue 20) fails verify
    (exit 8) and names it. Before: "all good"."""
    pod = Small(tmp_path / "pod")
    run(cli_env, pod)
    alias = pod.models / "my_nodes" / "alias.safetensors"
    assert alias.is_file()
    alias.unlink()
    os.symlink("../loras/style.safetensors", alias)
    res = run_cli(["verify", *pod.args()], cli_env, check=8)
    assert "dangling_links" in res.stdout and str(alias) in res.stdout, res.stdout


# --- issue 20: every leftover of ours is removed by the next command ------------------------------------

KILL_HOOK = """
import os, signal
_mark = os.environ.get("CM_TEST_KILL_IN_WRITE")
if _mark:
    from migrate.disk import fsops
    _write_all = fsops.write_all

    def write_all(fd, data):
        # SIGKILL in the middle of writing a file whose path holds the mark: half of it on the disk
        if _mark in os.readlink(f"/proc/self/fd/{fd}"):
            view = memoryview(data)
            os.write(fd, view[:max(1, len(view) // 2)])
            os.kill(os.getpid(), signal.SIGKILL)
        return _write_all(fd, data)
    fsops.write_all = write_all
"""


@pytest.mark.parametrize("then", ["run", "rollback"])
def test_a_kill_while_the_yaml_is_written_leaves_nothing_behind(tmp_path, cli_env, then):
    """SIGKILL halfway through writing extra_model_paths.yaml's temporary (issue 20): the next
    command, `run` (continuing the run) or `rollback`, removes `.extra_model_paths.yaml.cm-tmp-<pid>`
    (and the rollback gives the pod back exactly, the folder's mtime included). Before: it stayed
    forever."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    pod = Small(tmp_path / "pod")
    before = pod.snap()
    hooked = os.pathsep.join(filter(None, (str(hook), cli_env.get("PYTHONPATH"))))
    run(dict(cli_env, PYTHONPATH=hooked, CM_TEST_KILL_IN_WRITE=".extra_model_paths.yaml.cm-tmp-"), pod, check=KILLED)
    left = list(pod.comfyui.glob(".extra_model_paths.yaml.cm-tmp-*"))
    assert len(left) == 1 and left[0].stat().st_size > 0, left
    if then == "run":
        res = run(cli_env, pod)
        assert "(continued)" in res.stdout, res.stdout
        assert not list(pod.comfyui.glob(".*.cm-tmp-*"))
    rollback(cli_env, pod.target, "--yes")
    assert not list(pod.comfyui.glob(".*.cm-tmp-*"))
    assert_same(before, pod.snap(), f"after a kill in the YAML's write, then {then}")


def test_a_rollback_with_no_run_to_undo_leaves_no_stale_lock(tmp_path, cli_env):
    """The pod's only run is killed inside its first record: it did nothing, and its lock is stale.
    `rollback` has nothing to undo (exit 6, "no run to roll back") and removes the stale lock
    (issue 20). Before: the lock stayed."""
    pod = Small(tmp_path / "pod")
    run(crash_env(cli_env, "torn:1"), pod, check=KILLED)
    lock = pod.target / STATE / "lock"
    assert lock.exists()
    res = rollback(cli_env, pod.target, "--yes", check=6)
    assert "no run to roll back" in res.stderr, res.stderr
    assert not lock.exists(), "a rollback with nothing to do left the stale lock"


RO_HOOK = """
import errno, os
_store = os.environ.get("CM_TEST_RO_AT_COPY")
if _store:
    from migrate.disk import fsops
    _write_all, _write, _dev = fsops.write_all, os.write, os.stat(_store).st_dev

    def write(fd, data):
        if os.fstat(fd).st_dev == _dev:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return _write(fd, data)

    def write_all(fd, data):
        # A copy's first chunk into the store: from now on the store answers every write with
        # EROFS, the log's included (a volume that turned read-only). A tmpfs cannot be remounted
        # read-only while files on it are open for writing, so the kernel's answer is played here.
        if ".cm-tmp-" in os.readlink(f"/proc/self/fd/{fd}") and os.fstat(fd).st_dev == _dev:
            os.write = write
        return _write_all(fd, data)
    fsops.write_all = write_all
"""


def test_a_store_turning_read_only_mid_run_then_run_continues_the_same_run(tmp_path, cli_env):
    """The store (another filesystem) answers every write with EROFS from the run's first copy on,
    its log's included (issue 20): the run stops with one line naming both ways on, the YAML as it
    was; writable again, `run` continues the SAME run ("(continued)", one log) and one `rollback`
    gives the pod back exactly."""
    import subprocess
    store = tmp_path / "store"
    store.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(store)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a tmpfs")
    try:
        pod = Small(tmp_path / "pod", store)
        before = pod.snap()
        hook = tmp_path / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(RO_HOOK)
        hooked = os.pathsep.join(filter(None, (str(hook), cli_env.get("PYTHONPATH"))))
        first = run(dict(cli_env, PYTHONPATH=hooked, CM_TEST_RO_AT_COPY=str(store)), pod, check=None)
        assert "Read-only file system" in first.stderr, first.stderr
        assert first.returncode not in (0, 1), first.stderr
        _one_error_line(first)
        assert "`comfy-migrate run` (continues this run) or `comfy-migrate rollback` (undoes it)" in first.stderr, \
            first.stderr
        assert pod.yaml.read_bytes() == before["yaml"]
        again = run(cli_env, pod)
        assert "(continued)" in again.stdout, again.stdout
        assert len(_states(cli_env, store)) == 1
        rollback(cli_env, store, "--yes")
        assert_same(before, pod.snap(), "after a read-only store stopped the run, run, rollback")
    finally:
        subprocess.run(["umount", "-l", str(store)])


def test_a_probe_killed_mid_way_leaves_nothing_the_next_plan_does_not_undo(tmp_path, cli_env):
    """`plan` SIGKILLed inside a filesystem probe (issue 20) leaves its scratch folder and the probed
    folder's mtime changed; the next `plan` removes the folder and gives the folder its mtime back
    (kept in the scratch folder's name). Before: the folder went, its changed mtime stayed."""
    from migrate.core.model import PROBE_PREFIX
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    pod = Small(tmp_path / "pod")
    before = pod.snap()
    roots = (pod.comfyui, pod.target)
    times = {str(d): os.stat(d).st_mtime_ns for root in roots for d, _, _ in os.walk(root)}
    hooked = os.pathsep.join(filter(None, (str(hook), cli_env.get("PYTHONPATH"))))
    run_cli(["plan", *pod.args()], dict(cli_env, PYTHONPATH=hooked, CM_TEST_KILL_IN_WRITE="/" + PROBE_PREFIX),
            check=KILLED)
    left = [os.path.join(d, n) for root in roots for d, dirs, files in os.walk(root) for n in dirs + files
            if n.startswith(PROBE_PREFIX)]
    assert left, "the kill should come inside a probe"
    assert any(os.stat(os.path.dirname(p)).st_mtime_ns != times[os.path.dirname(p)] for p in left)
    run_cli(["plan", *pod.args()], cli_env)
    assert not [n for root in roots for _, dirs, files in os.walk(root) for n in dirs + files
                if n.startswith(PROBE_PREFIX)]
    assert {str(d): os.stat(d).st_mtime_ns for root in roots for d, _, _ in os.walk(root)} == times
    assert_same(before, pod.snap(), "after a plan killed in its probe, then a plan")


KILL_AT_HOOK = """
import os, signal
_at = os.environ.get("CM_TEST_KILL_AFTER")
if _at:
    _op, _folder, _k = _at.split(":")
    _seen = [0]
    _real = getattr(os, _op)

    def _hooked(*a, **kw):
        # SIGKILL right after the k-th `op` on an entry of `folder` (utime: on the folder itself)
        done = _real(*a, **kw)
        paths = [os.path.abspath(os.fsdecode(p)) for p in a[:2] if isinstance(p, (str, bytes))]
        if _folder in [p if _op == "utime" else os.path.dirname(p) for p in paths]:
            _seen[0] += 1
            if _seen[0] == int(_k):
                os.kill(os.getpid(), signal.SIGKILL)
        return done
    setattr(os, _op, _hooked)
"""


@pytest.mark.parametrize("then", ["rollback", "run"])
@pytest.mark.parametrize("at", ["mkdir:models:1", "rmdir:models:1", "unlink:models:1", "rmdir:models:2",
                                "link:store:1", "rmdir:store:1"])
def test_a_probe_killed_at_any_step_is_put_back_by_the_next_command(tmp_path, cli_env, at, then):
    """A run SIGKILLed in its filesystem probe, right after the probe made or removed its scratch
    entry in the pod's models folder or the store (`mkdir`/`link`: the entry is left; `rmdir`/
    `unlink`: it is gone and the folder's mtime not yet put back; the second rmdir: the re-plan's
    probe, under the lock), then `rollback --target` alone (as after a kill before any log: the
    rollback knows no pod) or `run` + `rollback`: the pod is back exactly, folder mtimes included,
    nothing of the probe left anywhere, and the store's folder has its mtime back too. Before
    (volumes, pod on sshfs, random kill 4): `rollback --target` never looked at the pod's models
    folder, and a kill after the scratch's removal left the folder's mtime changed with no trace."""
    from migrate.core.model import PROBE_PREFIX
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_AT_HOOK)
    pod = Small(tmp_path / "pod")
    op, where, k = at.split(":")
    folder = pod.models if where == "models" else pod.target
    before = pod.snap()
    times = {d: os.stat(d).st_mtime_ns for d, _, _ in os.walk(pod.comfyui)}
    store_time = os.stat(pod.target).st_mtime_ns
    hooked = os.pathsep.join(filter(None, (str(hook), cli_env.get("PYTHONPATH"))))
    run(dict(cli_env, PYTHONPATH=hooked, CM_TEST_KILL_AFTER=f"{op}:{folder}:{k}"), pod, check=KILLED)
    if then == "run":
        run(cli_env, pod)
    res = rollback(cli_env, pod.target, "--yes", check=None)
    assert res.returncode in (0, 6), res.stderr
    assert not [os.path.join(d, n) for d, dirs, files in os.walk(tmp_path / "pod") for n in dirs + files
                if n.startswith(PROBE_PREFIX)]
    assert {d: os.stat(d).st_mtime_ns for d, _, _ in os.walk(pod.comfyui)} == times
    assert_same(before, pod.snap(), f"after a kill in the probe ({at}), then {then}")
    if then == "rollback" and k == "1":       # (the re-plan's kill leaves the store its state folder: the lock's)
        assert os.stat(pod.target).st_mtime_ns == store_time
# --- 5. the log's format across versions ---------------------------------------------------------------

def test_the_log_format_is_what_earlier_versions_wrote_and_read(tmp_path, cli_env):
    """The typed records (issue 25) changed no field of the log: a step's source inode and device
    are written `ino`/`dev`, as every earlier version wrote and reads them (an older comfy-migrate on
    another pod of the store reads this pod's logs for what its own rollback must keep: a field
    renamed there would make it refuse the log). The log of 37dcea5's format then rolls back exactly."""
    pod = Small(tmp_path / "pod")
    before = pod.snap()
    run(cli_env, pod)
    records = read_records(pod.run_log())
    steps = [r for r in records if r.get("type") == "begin" and r.get("op") in ("link", "rename", "copy", "unlink")]
    assert steps and all("ino" in r and "dev" in r for r in steps), steps
    assert not any(k.startswith("src_") for r in records for k in r), records
    res = rollback(cli_env, pod.target, "--yes")
    assert " 0 skipped" in res.stdout and "not undone" not in res.stderr, res.stdout + res.stderr
    assert_same(before, pod.snap(), "after rolling back")


def test_every_record_reads_back_as_written():
    """One frozen type per record kind: to_json then from_json gives the same record; a field of
    another type, or a missing one a reader needs, is named with its line when a log is loaded."""
    from migrate.core import records as R
    from migrate.core.errors import BadLog
    from migrate.core.steps import Op
    samples = [R.Header(target="/t", sources=("/s",), run="r", host="h", fs={"/t": {"mtime_step_ns": 1}}),
               R.Resume(target="/t", sources=("/s",), torn_tail_dropped=True), R.DirTimes({"/t": 5}),
               R.Links({"/t/a": "../b"}),
               R.Step(step=4, op=Op.COPY, src="/s/a", dst="/t/a", size=3, src_dev=1, src_ino=2, mode=0o644,
                      mtime_ns=7, digest="d", tmp="/t/.a.tmp", links=("/s/l",)),
               R.Step(step=5, op=Op.MKDIR, path="/t/x"), R.Done(4, 9, 1, 8), R.Fail(4, "EIO"), R.Staged(4, 9, 1),
               R.Cleanup("/t/.a.tmp", 4), R.Stopped("full", 1, False), R.Stayed((["/s/b", 1, 2, "d"],)),
               R.Names((["loras", "a", "d", 3],)), R.Close("complete", 1, 3, 1, 3, 0)]
    for rec in samples:
        assert type(rec).from_json(rec.to_json()) == rec, rec
    rb = [R.RbHeader(rollback_of="r.jsonl", run="r"), R.RbResume(1, "h"), R.UndoBegin(4, "copy"), R.Skip(4, "why"),
          R.Keep(4, "/t/a", ("r2",), "a", "d", 3), R.UndoDone(4), R.Swept(("/t/x",)), R.Restored(2), R.RbClose(1, 1, 1)]
    for rec in rb:
        assert type(rec).from_json(rec.to_json()) == rec, rec
    assert R.Keep(4, "/t/a", ("r2",)).to_json()["for"] == ["r2"]      # the log's name for who relies on it
    docs = [r.to_json() for r in samples]
    assert [type(r) for r in R.load(docs, "log")] == [type(r) for r in samples]
    for i, bad, word in ((6, dict(docs[6], dst_ino="9"), "line 7: a done record's dst_ino is str"),
                         (8, {k: v for k, v in docs[8].items() if k != "tmp_ino"}, "line 9: a staged record has no tmp_ino"),
                         (4, {k: v for k, v in docs[4].items() if k != "digest"}, "line 5: copy step 4 has no digest")):
        with pytest.raises(BadLog, match=word):
            R.load(docs[:i] + [bad] + docs[i + 1:], "log")
    # a record of a kind, or a step of an op, this version does not know is kept, not refused
    later = R.load(docs + [{"type": "attest", "x": 1}, {"type": "begin", "step": 99, "op": "attach"}], "log")
    assert isinstance(later[-2], R.Other) and later[-1].known is None and later[-1].op == "attach"
