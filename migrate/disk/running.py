"""A ComfyUI running from a given folder, found through /proc (reads only).

ComfyUI reads extra_model_paths.yaml once, at start-up: a server started before a run changed the
YAML still searches the old folders, and its lists show the models where they were. `run` refuses
while one is running (unless told otherwise) and `verify --comfyui-url` uses the start time to say
"restart it". A process counts when its command line runs a `main.py` in this folder (given by
path, or relative to its working folder). A ComfyUI in another container is not visible here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

DEFAULT_PORT = 8188


@dataclass(frozen=True)
class Running:
    """One ComfyUI process.

    Args:
        pid: its process id.
        port: the port from its `--port` (ComfyUI's default 8188 without one).
        started: when it started (seconds since the epoch), None where /proc does not say.
        cmdline: its command line, joined with spaces.
        args: ComfyUI's own options (those after main.py).
        cwd: its working folder (relative options are taken from it), None where /proc does not say.
        main: the real folder of its main.py.
    """

    pid: int
    port: int
    started: Optional[float]
    cmdline: str
    args: Tuple[str, ...] = ()
    cwd: Optional[str] = None
    main: str = ""

    def describe(self) -> str:
        return f"pid {self.pid}, port {self.port}"


def _port(args: List[str]) -> int:
    for i, a in enumerate(args):
        if a == "--port" and i + 1 < len(args) and args[i + 1].isdigit():
            return int(args[i + 1])
        if a.startswith("--port=") and a[7:].isdigit():
            return int(a[7:])
    return DEFAULT_PORT


def _started(proc: str, pid: int) -> Optional[float]:
    """Start time from /proc/<pid>/stat (clock ticks after boot) and /proc/stat's btime."""
    try:
        with open(os.path.join(proc, str(pid), "stat"), "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open(os.path.join(proc, "stat"), "rb") as f:
            btime = next(int(ln.split()[1]) for ln in f if ln.startswith(b"btime "))
        return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return None


# Python's own options that take the next argument (`-X utf8`, `-W ignore`, `--check-hash-based-pycs m`).
_PY_WITH_VALUE = frozenset("XW")


def script_index(args: List[str]) -> Optional[int]:
    """The index of the script a Python command line runs (`python3 -X utf8 -u main.py` -> 4), None
    for `-c`/`-m`; a command line whose first word is not a Python: the first of its next two
    words named main.py (a launcher such as `uv run main.py`)."""
    if not args:
        return None
    if not os.path.basename(args[0]).startswith(("python", "pypy")):
        return next((i for i in (1, 2) if i < len(args) and os.path.basename(args[i]) == "main.py"), None)
    i = 1
    while i < len(args):
        a = args[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            break
        if a.startswith("--"):
            i += 2 if a == "--check-hash-based-pycs" else 1
            continue
        cluster = a[1:]
        for j, ch in enumerate(cluster):
            if ch in "cm":
                return None                 # python -c CODE / -m MODULE: no script
            if ch in _PY_WITH_VALUE:
                if j == len(cluster) - 1:
                    i += 1                  # `-X utf8`: the value is the next word
                break                       # `-Xutf8`: the rest of the cluster is the value
        i += 1
    return i if i < len(args) else None


def _processes(proc: str):
    """(pid, argv) of every process but this one."""
    try:
        pids = sorted(int(n) for n in os.listdir(proc) if n.isdigit())
    except OSError:
        return
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            with open(os.path.join(proc, str(pid), "cmdline"), "rb") as f:
                args = [a.decode("utf-8", "surrogateescape") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        yield pid, args


def find_running(comfyui: Optional[str], proc: str = "/proc") -> List[Running]:
    """Every process running <comfyui>/main.py (by path, or as `main.py` from that folder), oldest
    pid first; comfyui None: every process running a main.py (any folder)."""
    want = os.path.realpath(comfyui) if comfyui is not None else None
    out: List[Running] = []
    for pid, args in _processes(proc):
        i = script_index(args)
        if i is None or os.path.basename(args[i]) != "main.py":
            continue
        try:
            cwd: Optional[str] = os.readlink(os.path.join(proc, str(pid), "cwd"))
        except OSError:
            cwd = None
        s = args[i]
        if not os.path.isabs(s):
            if cwd is None:
                continue
            s = os.path.join(cwd, s)
        main = os.path.dirname(os.path.realpath(s))
        if want is None or main == want:
            out.append(Running(pid, _port(args[i + 1:]), _started(proc, pid), " ".join(args),
                               tuple(args[i + 1:]), cwd, main))
    return out
