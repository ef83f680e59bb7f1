#!/usr/bin/env python3
"""A container-disk pod migrated onto a real MooseFS (issue 14, item 7): `comfy-migrate run --yes`
next to `rsync -a --remove-source-files` of the same pod, fresh copies each trial, alternating,
page cache warm, medians. Needs root and /dev/fuse (../shared/tools/moosefs-volume); otherwise it
prints why and exits 0. scripts/bench imports `pod_row_setup` for its MooseFS row.

Usage: scripts/moosefs_pod.py [--size-mib 1024] [--runs 3] [--dir /tmp] [--strace]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOOSEFS_TOOL = os.path.join(ROOT, "..", "shared", "tools", "moosefs-volume")
MiB = 1 << 20
# The pod: four models, shares of the total size (a checkpoint, a VAE, a text encoder, a LoRA).
SHARES = (("checkpoints/model.safetensors", 0.50), ("clip/t5.safetensors", 0.30),
          ("vae/vae.safetensors", 0.15), ("loras/style.safetensors", 0.05))


def why_not() -> str:
    """'' where a MooseFS volume can be started here, else the reason."""
    if os.geteuid() != 0:
        return "needs root (MooseFS daemons and a FUSE mount)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if not os.access(MOOSEFS_TOOL, os.X_OK):
        return f"{os.path.normpath(MOOSEFS_TOOL)} not found"
    return ""


def volume(cmd: str, where: str) -> None:
    subprocess.run([MOOSEFS_TOOL, cmd, where], check=True, stdout=subprocess.DEVNULL)
    if cmd == "up" and shutil.which("mfssettrashtime"):
        # MooseFS keeps a removed file's chunks in its trash for a day by default. Removed means
        # removed here. The tool asks the master, which listens only inside the volume's network
        # namespace.
        import hashlib
        d = os.path.realpath(where)
        ns = "cmfs-" + hashlib.sha1(d.encode()).hexdigest()[:8]     # moosefs-volume's name
        subprocess.run(["nsenter", f"--net=/var/run/netns/{ns}", "mfssettrashtime", "-r", "0",
                        os.path.join(d, "mnt")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if cmd == "up":
        settle_in(os.path.join(os.path.realpath(where), "mnt"))


def settle_in(mnt: str) -> None:
    """The first rewrite of a chunk on a new MooseFS stalls for seconds once (measured: a second
    append + fsync to one file took 7.9 s, every later one under 2 ms): a volume that has served
    for months never does that, and a trial that met it measured the volume's first minutes, not
    the migration (the first run after each new volume took 7-10 s instead of 3). Met here, once."""
    path = os.path.join(mnt, ".settle-in")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    try:
        for _ in range(4):
            os.write(fd, b"x" * 200)
            os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(path)


RECYCLE = 4 << 30       # a volume whose chunkserver holds more than this is made anew before a trial


def chunk_bytes(vol: str) -> int:
    """Bytes the volume's chunkserver holds on disk (its chunk folder)."""
    total = 0
    for d, _, fs in os.walk(os.path.join(vol, "chunks")):
        for f in fs:
            try:
                total += os.lstat(os.path.join(d, f)).st_blocks * 512
            except OSError:
                pass
    return total


def recycle(vol: str, need: int) -> None:
    """Make the volume anew once its chunkserver holds more than RECYCLE bytes. Even with trash time
    0, this MooseFS (3.0.117) did not delete the chunks of removed files within minutes: every
    trial's fresh target stayed on disk (47 trials of 1 GiB filled this machine's disk)."""
    if chunk_bytes(vol) <= RECYCLE:
        return
    volume("down", vol)
    shutil.rmtree(vol, ignore_errors=True)
    volume("up", vol)
    wait_free(vol, need)


def wait_free(vol: str, need: int) -> None:
    """statvfs of a new MooseFS mount reads 0 bytes free until the chunkserver registers."""
    for _ in range(60):
        if shutil.disk_usage(os.path.join(vol, "mnt")).free > need:
            return
        time.sleep(0.5)


def build_pod(models: str, total_mib: int) -> List[str]:
    """Valid safetensors models of incompressible, distinct content under `models` (the audit holds
    back broken files); returns their paths."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench import Writer
    w, out = Writer(), []
    for i, (rel, share) in enumerate(SHARES):
        p = os.path.join(models, rel)
        w.write(p, max(MiB, int(total_mib * share * MiB)), i + 1)
        ns = 1_690_000_000_123_456_789 + i * 1_000_000_007
        os.utime(p, ns=(ns, ns))
        out.append(p)
    return out


def files_of(root: str) -> List[str]:
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


def warm(files: List[str]) -> None:
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(8 * MiB):
                pass


def fresh(pristine: str, src: str, dst: str, vol: Optional[str] = None) -> None:
    for p in (src, dst):
        if os.path.lexists(p):
            shutil.rmtree(p)
    if vol is not None:
        recycle(vol, 2 * sum(os.path.getsize(f) for f in files_of(pristine)))
    os.makedirs(os.path.dirname(src), exist_ok=True)
    subprocess.run(["cp", "-a", pristine, src], check=True)
    os.sync()
    warm(files_of(src))


def check(pristine: str, src: str, dst: str) -> Optional[str]:
    # by name and size: the run files clip/ under text_encoders/, as ComfyUI does now
    want = {os.path.basename(f): os.path.getsize(f) for f in files_of(pristine)}
    got = {os.path.basename(f): os.path.getsize(f) for f in files_of(dst) if "/.comfy-migrate/" not in f}
    left = [f for f in files_of(src) if "/.comfy-migrate/" not in f] if os.path.isdir(src) else []
    if {k: v for k, v in got.items() if k in want} != want:
        return "not every model arrived"
    if left:
        return f"{len(left)} source files left behind"
    return None


def commands(cm: str, src: str, dst: str) -> Dict[str, List[str]]:
    return {"comfy-migrate run": [cm, "run", "--source", src, "--target", dst, "--yes"],
            "rsync -a --remove-source-files": ["rsync", "-a", "--remove-source-files", src + "/", dst + "/"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--strace", action="store_true", help="one extra run of ours under strace -c -f")
    ap.add_argument("--only-us", action="store_true")
    ap.add_argument("--before", metavar="DIR", help="also time the run with the package in DIR (e.g. "
                    "`git archive main migrate | tar -x -C DIR`), in the same rotation")
    args = ap.parse_args()
    reason = why_not()
    if reason:
        print(f"skipped: {reason}")
        return 0
    cm = os.path.join(ROOT, ".venv", "bin", "comfy-migrate")
    top = tempfile.mkdtemp(prefix="comfy-mfs-pod-", dir=args.dir)
    vol = os.path.join(top, "volume")
    home = os.path.join(top, "home")
    os.makedirs(home)
    env = dict(os.environ, HOME=home, XDG_CACHE_HOME=os.path.join(home, ".cache"), LC_ALL="C",
               COMFY_MIGRATE_CACHE=os.path.join(home, ".cache", "digests.sqlite"))
    for var in ("COMFYUI_DIR", "COMFY_MIGRATE_SOURCE", "COMFY_MIGRATE_TARGET", "COMFY_MIGRATE_YAML",
                "COMFY_MIGRATE_MODE", "COMFY_MIGRATE_FORMAT"):
        env.pop(var, None)
    pristine = os.path.join(top, "pristine", "models")
    build_pod(pristine, args.size_mib)
    src = os.path.join(top, "pod", "models")
    volume("up", vol)
    try:
        dst = os.path.join(vol, "mnt", "models")
        wait_free(vol, 2 * args.size_mib * MiB)
        cmds = commands(cm, src, dst)
        if args.only_us:
            cmds = {k: v for k, v in cmds.items() if k.startswith("comfy")}
        envs = {n: env for n in cmds}
        if args.before:
            cmds["comfy-migrate run (before)"] = cmds["comfy-migrate run"]
            envs["comfy-migrate run (before)"] = dict(env, PYTHONPATH=os.path.abspath(args.before))
        names = list(cmds)
        times: Dict[str, List[float]] = {n: [] for n in names}
        for i in range(args.runs):
            order = names[i % len(names):] + names[:i % len(names)]
            for n in order:
                fresh(pristine, src, dst, vol)
                t0 = time.perf_counter()
                r = subprocess.run(cmds[n], env=envs[n], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                dt = time.perf_counter() - t0
                problem = f"exit {r.returncode}: {r.stderr.decode()[-300:]}" if r.returncode else check(pristine, src, dst)
                print(f"  {n}: {dt:.2f} s" + (f"  FAILED: {problem}" if problem else ""), flush=True)
                if not problem:
                    times[n].append(dt)
        if args.strace:
            fresh(pristine, src, dst, vol)
            subprocess.run(["strace", "-c", "-f", "-o", os.path.join(args.dir, "comfy-mfs-strace.txt")] + cmds[names[0]],
                           env=env, stdout=subprocess.DEVNULL)
            print(open(os.path.join(args.dir, "comfy-mfs-strace.txt")).read()[:3000])
    finally:
        volume("down", vol)
        shutil.rmtree(top, ignore_errors=True)
    med = {n: statistics.median(t) for n, t in times.items() if t}
    us = med.get(names[0])
    for n in names:
        m = med.get(n)
        ratio = f"{us / m:.2f}x" if (m and us and n != names[0]) else ""
        print(f"{n}: median {'-' if m is None else f'{m:.2f}'} s of {len(times[n])} runs "
              f"{'(ours/its time: ' + ratio + ')' if ratio else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
