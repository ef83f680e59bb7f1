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
from typing import List, Optional

DEFAULT_PORT = 8188


@dataclass(frozen=True)
class Running:
    """One ComfyUI process.

    Args:
        pid: its process id.
        port: the port from its `--port` (ComfyUI's default 8188 without one).
        started: when it started (seconds since the epoch), None where /proc does not say.
        cmdline: its command line, joined with spaces.
    """

    pid: int
    port: int
    started: Optional[float]
    cmdline: str

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


def find_running(comfyui: str, proc: str = "/proc") -> List[Running]:
    """Every process running <comfyui>/main.py (by path, or as `main.py` from that folder), oldest pid first."""
    want = os.path.realpath(comfyui)
    out: List[Running] = []
    try:
        pids = sorted(int(n) for n in os.listdir(proc) if n.isdigit())
    except OSError:
        return out
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            with open(os.path.join(proc, str(pid), "cmdline"), "rb") as f:
                args = [a.decode("utf-8", "surrogateescape") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        scripts = [a for a in args[:3] if os.path.basename(a) == "main.py"]
        if not scripts:
            continue
        try:
            cwd = os.readlink(os.path.join(proc, str(pid), "cwd"))
        except OSError:
            cwd = None
        for s in scripts:
            if not os.path.isabs(s):
                if cwd is None:
                    continue
                s = os.path.join(cwd, s)
            if os.path.dirname(os.path.realpath(s)) == want:
                out.append(Running(pid, _port(args), _started(proc, pid), " ".join(args)))
                break
    return out
