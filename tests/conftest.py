"""Shared test helpers: an isolated environment for the CLI, a subprocess runner, the demo pod,
and a tree snapshot for "nothing changed" checks.

Import the plain helpers from a test module with `from conftest import run_cli, snapshot_tree`
(pytest puts tests/ on sys.path for its rootdir conftest). Fixtures are picked up by name.

Nothing here may touch /workspace or the real home: every state location the tool knows about
(HOME, XDG_*_HOME, COMFY_MIGRATE_CACHE, COMFY_MIGRATE_TARGET) points into the test's tmp_path, and
inherited COMFYUI_DIR / COMFY_MIGRATE_* variables are dropped.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

import pytest

from hypothesis import settings as _hyp_settings

# No test may judge by time (house rule): Hypothesis's default 200 ms per example is a timed
# assertion that failed under load (tests/test_store_names.py, 257 ms on a shared 2-core machine).
_hyp_settings.register_profile("comfy-migrate", deadline=None)
_hyp_settings.load_profile("comfy-migrate")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


def _load_make_pod():
    spec = importlib.util.spec_from_file_location("make_pod", FIXTURES / "make_pod.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)   # type: ignore[union-attr]
    return mod


make_pod = _load_make_pod()


def as_model(rel: str, payload: bytes) -> bytes:
    """payload inside a valid file of rel's model format, so the audit never holds it back: the one
    U8 tensor of a safetensors file, after a pickle's first two bytes for .pt/.pth/.ckpt, or as it
    is for other names. Equal payloads under names of one format stay equal (duplicates)."""
    low = rel.lower()
    if low.endswith((".pt", ".pth", ".ckpt")):
        return b"\x80\x02" + payload
    if low.endswith((".safetensors", ".sft")):
        import json
        raw = json.dumps({"w": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}}).encode()
        return len(raw).to_bytes(8, "little") + raw + payload
    return payload


def typed(dicts: Sequence[dict]) -> list:
    """Journal records as the readers get them (migrate.core.records), from their JSON, without the
    checks a log gets when it is loaded: pure tests write only the fields the code under test reads."""
    from migrate.core import records
    from migrate.core.steps import Op
    out = []
    for d in dicts:
        cls = records.RUN_KINDS.get(d["type"]) or records.ROLLBACK_KINDS[d["type"]]
        kw = {}
        for name, (key, _, _) in cls.JSON.items():
            k = key if key in d else next((o for o, n in cls.OLD.items() if n == name and o in d), None)
            if k is not None:
                kw[name] = tuple(d[k]) if isinstance(d[k], list) else d[k]
        if cls is records.Step:
            kw["op"] = Op(kw["op"])
        out.append(cls(**kw))
    return out


def past_racy_window() -> None:
    """Wait until files made just now are no longer "racily clean" (hashing.racy): a digest read
    in the same clock tick as a file's last change is never trusted later, so a test that wants a
    warm cache to be used waits this long between making its files and reading them."""
    import time
    from migrate.disk.hashing import FINE_SLACK_NS
    time.sleep(FINE_SLACK_NS / 1e9 + 0.05)


# --- no test touches the real home ---------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _home_in_tmp(tmp_path_factory, monkeypatch) -> None:
    """Every test, in-process code included, sees HOME and XDG_*_HOME in a temp folder, and no
    COMFY_MIGRATE_* or COMFYUI_DIR of the host: the digest cache, the probe notes beside it, the
    trash and the configuration never land in the real home (in-process probes wrote
    ~/.cache/comfy-migrate/probes/ before). A test that needs other values sets its own."""
    base = tmp_path_factory.mktemp("home")
    for var in [k for k in os.environ if k.startswith("COMFY_MIGRATE_") or k == "COMFYUI_DIR"]:
        monkeypatch.delenv(var)
    for var, sub in (("HOME", "home"), ("XDG_CACHE_HOME", "cache"), ("XDG_DATA_HOME", "data"),
                     ("XDG_CONFIG_HOME", "config"), ("XDG_STATE_HOME", "xdgstate")):
        (base / sub).mkdir()
        monkeypatch.setenv(var, str(base / sub))


# --- the CLI -----------------------------------------------------------------------------------------

@pytest.fixture
def cli_env(tmp_path: Path) -> Dict[str, str]:
    """Environment for running the CLI as a subprocess, with all state inside tmp_path/state.

    HOME, XDG_CACHE_HOME, XDG_DATA_HOME, XDG_CONFIG_HOME, XDG_STATE_HOME -> tmp_path/state/...;
    COMFY_MIGRATE_CACHE -> tmp_path/state/cache/digests.sqlite;
    COMFY_MIGRATE_TARGET -> tmp_path/target (a default only: tests with a pod pass --target).
    Inherited COMFYUI_DIR and COMFY_MIGRATE_* are removed so the host cannot leak in.
    Copy it (`dict(cli_env, X=...)`) to change a variable for one call.
    """
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("COMFY_MIGRATE_") or k == "COMFYUI_DIR")}
    dirs = {"HOME": "home", "XDG_CACHE_HOME": "cache", "XDG_DATA_HOME": "data",
            "XDG_CONFIG_HOME": "config", "XDG_STATE_HOME": "xdgstate"}
    for var, sub in dirs.items():
        (state / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(state / sub)
    env["COMFY_MIGRATE_CACHE"] = str(state / "cache" / "digests.sqlite")
    env["COMFY_MIGRATE_TARGET"] = str(tmp_path / "target")
    env["PYTHONIOENCODING"] = "utf-8"
    env["LC_ALL"] = env["LANG"] = "C.UTF-8"
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_cli(args: Sequence[Union[str, os.PathLike]], env: Dict[str, str], check: Optional[int] = 0,
            cwd: Optional[Union[str, os.PathLike]] = None, input: Optional[str] = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `python -m migrate ARGS` as a real subprocess; returns the CompletedProcess (text).

    check: the exit code expected (default 0); None accepts any. On a mismatch the assertion
    shows the command, stdout and stderr. stdin is empty unless `input` is given (no TTY).
    Output is decoded as UTF-8 with surrogateescape, so odd bytes never raise here.
    """
    cmd = [sys.executable, "-m", "migrate", *map(str, args)]
    proc = subprocess.run(cmd, env=env, cwd=str(cwd) if cwd else env.get("HOME"), input=input or "",
                          capture_output=True, encoding="utf-8", errors="surrogateescape", timeout=timeout)
    if check is not None:
        assert proc.returncode == check, (
            f"{' '.join(cmd[2:])}: exit {proc.returncode}, expected {check}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def run_leaving_conflicts(args: Sequence[Union[str, os.PathLike]], env: Dict[str, str], n: int = 1,
                          **kw) -> subprocess.CompletedProcess:
    """`run ARGS` on a pod holding n deliberate conflicts (the demo pod: one): run exits 1, for
    those files stay where they are, and they alone stayed (README: exit codes)."""
    proc = run_cli(["run", *args], env, check=1, **kw)
    if "json" in [str(a) for a in args] or env.get("COMFY_MIGRATE_FORMAT") == "json":
        assert [s["why"] for s in json.loads(proc.stdout)["stayed"]] == ["conflict"] * n, proc.stdout
    else:
        assert f"{n} model file(s) stayed where they are, not in the store ({n} conflict; e.g. conflict: " in proc.stderr, proc.stderr
    return proc


# --- the demo pod ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pod:
    """The demo pod of fixtures/pod.json, built under `root` (= tmp_path/pod)."""

    root: Path       # everything the pod holds: both trees and the YAML
    comfyui: Path    # <root>/runpod-slim/ComfyUI
    models: Path     # <comfyui>/models (the source)
    target: Path     # <root>/models (the shared store, already holding two files)
    yaml: Path       # <comfyui>/extra_model_paths.yaml (exists, with a user section)

    def args(self, *extra: str) -> list:
        """`--comfyui C --target T` plus extra, for `plan`/`run`-like commands."""
        return ["--comfyui", str(self.comfyui), "--target", str(self.target), *extra]


@pytest.fixture
def pod(tmp_path: Path) -> Pod:
    """Build fixtures/pod.json in tmp_path/pod (scale 1: about 14 MiB, real safetensors headers)."""
    root = tmp_path / "pod"
    comfyui, target = make_pod.build(str(root))
    comfyui = Path(comfyui).resolve()
    return Pod(root=root.resolve(), comfyui=comfyui, models=comfyui / "models",
               target=Path(target).resolve(), yaml=comfyui / "extra_model_paths.yaml")


# --- a second filesystem -----------------------------------------------------------------------------

@pytest.fixture
def other_fs(tmp_path: Path) -> Iterator[Path]:
    """A fresh folder on another filesystem than tmp_path (/dev/shm), removed afterwards.

    Skips the test, saying why, where /dev/shm is missing, not writable or on tmp_path's device.
    """
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK | os.X_OK):
        pytest.skip("no writable /dev/shm to serve as a second filesystem")
    if os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same filesystem as tmp_path: no second filesystem here")
    path = Path(tempfile.mkdtemp(prefix="comfy-migrate-test-", dir=str(shm)))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- snapshots ---------------------------------------------------------------------------------------

Entry = Tuple


def snapshot_tree(root: Union[str, os.PathLike]) -> Dict[str, Entry]:
    """Every entry under root (root included), nothing excluded, not following symlinks.

    Maps the path relative to root (as bytes-safe str) to
    (kind, permission bits, mtime_ns, inode, nlink, content): content is the file's bytes, a
    symlink's target, or None for folders and special files. Two equal snapshots mean no byte,
    mode, mtime, inode or link count changed and nothing was added or removed.
    """
    root = os.fspath(root)
    snap: Dict[str, Entry] = {}

    def add(path: str, rel: str) -> None:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            kind, content = "symlink", os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                kind, content = "file", f.read()
        elif stat.S_ISDIR(st.st_mode):
            kind, content = "dir", None
        else:
            kind, content = "special", None
        snap[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_ino, st.st_nlink, content)
        if kind == "dir":
            for name in sorted(os.listdir(path)):
                add(os.path.join(path, name), f"{rel}/{name}" if rel else name)

    add(root, "")
    return snap
