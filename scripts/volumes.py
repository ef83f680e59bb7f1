#!/usr/bin/env python3
"""The volume suite (issue 14): the real CLI on real filesystems, as store and as the pod's own volume.

Filesystems: a real MooseFS (../shared/tools/moosefs-volume, what RunPod's network volumes are),
exFAT through exfat-fuse on a loop image (no hardlinks, no symlinks, coarse times), ext4 made with
`mkfs.ext4 -I 128` (whole-second mtimes), and an overlay (a container's root) as the pod's disk.
Each scenario: plan, run, verify, a second run doing nothing, rollback giving the pod back exactly
(paths, bytes, modes, link counts, mtimes as the pod's filesystem keeps them, the YAML) with no model,
temporary, probe or lock left in the store; then SIGKILL after every journal record of a run (then
continue + rollback, or rollback at once) and of a rollback (then rollback again), each checked the
same way. FUSE stores that change mtimes or inode numbers under us (issue 20: an rclone mount of a
local folder with --vfs-cache-mode writes, sshfs over ssh to this machine, mergerfs) add runs ->
rollbacks with `purge --permanent` between every other pair (every source then comes back from the
store's copy) and SIGKILLs at random moments (inside a copy, a rename, the probe), each checked the
same way. Prints one row per scenario (the README's table is made from it).

Needs root and /dev/fuse; installs exfat-fuse and exfatprogs (and rclone, sshfs, mergerfs, openssh
when their scenarios run) with apt itself. Otherwise it prints
why and exits 0 (skipped). Usage: scripts/volumes [--only NAME] [--stride N] [--keep]
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
MOOSEFS_TOOL = os.path.join(ROOT, "..", "shared", "tools", "moosefs-volume")

from migrate.disk import fsops  # noqa: E402

MODELS = {   # rel -> payload seed; equal seeds are equal content
    "checkpoints/sd15.safetensors": "a",
    "loras/style.safetensors": "b",
    "loras/copy_of_style.safetensors": "b",
    "unet/wan.safetensors": "c",
    "vae/sub/decoder.pt": "d",
    "insightface/models/antelope/glint.onnx": "e",
    "insightface/glint.onnx": "f",
    "loras/put_loras_here": "",
}
UPPER = ("loras/style.safetensors", "loras/second_name.safetensors")
USER_YAML = "# my own paths\nother:\n  base_path: /opt/x\n  loras: loras\n"


def model_bytes(rel: str, seed: str) -> bytes:
    if not seed:
        return b""
    payload = (seed.encode() * 4096)[: 20000 + 1000 * ord(seed[0])]
    if rel.endswith(".safetensors"):
        raw = json.dumps({"w": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}}).encode()
        return len(raw).to_bytes(8, "little") + raw + payload
    if rel.endswith(".pt"):
        return b"\x80\x02" + payload
    return payload


KILL_SET = ("loras/style.safetensors", "loras/copy_of_style.safetensors", "loras/second_name.safetensors",
            "insightface/glint.onnx", "extra_model_paths.yaml", "checkpoints/alias_of_style.safetensors")
LINKS = {"checkpoints/alias_of_style.safetensors": "../loras/copy_of_style.safetensors"}   # in-tree symlinks


def make_pod(comfy: str, only: Optional[Callable[[str], bool]] = None) -> None:
    """ComfyUI/models with MODELS (odd nanosecond mtimes), a hardlinked pair, the user's YAML."""
    models = os.path.join(comfy, "models")
    os.makedirs(models, exist_ok=True)
    for i, (rel, seed) in enumerate(sorted(MODELS.items())):
        if only is not None and not only(rel):
            continue
        p = os.path.join(models, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(model_bytes(rel, seed))
        ns = 1_690_000_000_123_456_789 + i * 1_000_000_007
        os.utime(p, ns=(ns, ns))
        os.chmod(p, 0o640 if i % 2 else 0o644)
    if only is None or only("loras/second_name.safetensors"):
        try:        # two names of one file come back as one file
            os.link(os.path.join(models, "loras/style.safetensors"), os.path.join(models, "loras/second_name.safetensors"))
        except OSError:     # a pod on exFAT (EPERM) or rclone (EIO) has no hardlinks: a plain duplicate there
            a, b = os.path.join(models, "loras/style.safetensors"), os.path.join(models, "loras/second_name.safetensors")
            shutil.copyfile(a, b)       # not copy2: rclone answers listxattr with EIO
            st = os.stat(a)
            os.chmod(b, stat.S_IMODE(st.st_mode))
            os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    for rel, to in LINKS.items():      # a name that is a symlink to another model: its file moves, it follows
        if only is None or only(rel):
            os.makedirs(os.path.join(models, os.path.dirname(rel)), exist_ok=True)
            try:
                os.symlink(to, os.path.join(models, rel))
            except OSError:     # a pod on exFAT has no symlinks
                pass
    if only is None or only("extra_model_paths.yaml"):
        y = os.path.join(comfy, "extra_model_paths.yaml")
        with open(y, "w") as f:
            f.write(USER_YAML)


def snapshot(root: str) -> Dict[str, tuple]:
    """(kind, mode, mtime_ns, nlink, content) per path: everything a rollback must give back."""
    snap: Dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [""] + sorted(filenames) + sorted(d for d in dirnames if os.path.islink(os.path.join(dirpath, d))):
            p = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                try:
                    content = os.readlink(p)
                except OSError as exc:      # sshfs: a link holding `..` is made, but never read back
                    content = f"<unreadable link: {exc.strerror}>"
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    content = f.read()
            else:
                content = None
            nlink = st.st_nlink if stat.S_ISREG(st.st_mode) else 0
            snap[os.path.relpath(p, root)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_mtime_ns,
                                               nlink, content)
    return snap


def diff(a: Dict[str, tuple], b: Dict[str, tuple]) -> List[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            x, y = a.get(k), b.get(k)
            what = "missing" if y is None else "added" if x is None else \
                ",".join(n for n, u, v in zip(("kind", "mode", "mtime", "nlink", "bytes"), x, y) if u != v)
            out.append(f"{k}: {what}" + (f" ({x[2]} -> {y[2]})" if x and y and x[2] != y[2] else ""))
    return out


def store_leftovers(store: str) -> List[str]:
    """Files in the store after a rollback: models, temporaries, probes, a lock (logs may stay)."""
    left = []
    for dirpath, dirnames, filenames in os.walk(store):
        rel = os.path.relpath(dirpath, store)
        for n in filenames + [d for d in dirnames if d.startswith(".comfy-migrate-probe-")]:
            r = os.path.normpath(os.path.join(rel, n))
            if r.startswith(".comfy-migrate/") and not (r == ".comfy-migrate/lock" or r.startswith(".comfy-migrate/lock.")):
                continue
            left.append(r)
    return left


class Scenario:
    def __init__(self, name: str, pod_parent: str, store: str, fs_name: str,
                 build: Optional[Callable[[str, bool], None]] = None, settle: Optional[Callable[[], None]] = None,
                 purge_trips: int = 0, random_kills: int = 0, attr_cache_s: float = 0,
                 stays: Optional[Dict[str, str]] = None) -> None:
        self.name, self.pod_parent, self.store, self.fs_name = name, pod_parent, store, fs_name
        # settle: wait until the volume holds what was written (rclone uploads a file seconds after
        # it is closed): a pod's files are old, not written a moment before the run.
        self.settle = settle or (lambda: None)
        self.purge_trips, self.random_kills = purge_trips, random_kills
        # mergerfs caches attributes for a second: a link count read at once may be the one before the
        # rollback's last unlink (what our checks see is the snapshot's, not the tool's, concern)
        self.attr_cache_s = attr_cache_s
        # rel -> why: model files the plan keeps on the pod by design (a run then exits 1, as documented)
        self.stays = stays or {}
        self.run_ok: Tuple[int, ...] = (0, 1) if self.stays else (0,)
        self.build = build or (lambda comfy, small: make_pod(comfy, (lambda rel: rel in KILL_SET) if small else None))
        self.comfy = os.path.join(pod_parent, "ComfyUI")
        self.prefix: List[str] = []           # runs each CLI inside this (a container's namespaces)
        self.check: Callable[[], List[str]] = lambda: []     # more to hold after each rollback

    def reset(self, small: bool = False) -> None:
        """A fresh pod (small: the kill sweeps' few files, still with a duplicate, a hardlinked pair,
        a custom-node folder and the user's YAML) and no store."""
        for p in (self.comfy, self.store):
            for attempt in range(30):     # rclone refuses (EIO) to remove a folder it still uploads to
                try:
                    if os.path.lexists(p):
                        shutil.rmtree(p)
                    break
                except OSError:
                    self.settle()
                    time.sleep(0.2)
            else:       # rclone kept refusing: set it aside, outside the pod and the store
                aside = os.path.join(os.path.dirname(self.pod_parent), f".aside-{time.monotonic_ns()}")
                try:
                    os.rename(p, aside)
                except OSError as e:      # the store on rclone, the pod elsewhere: beside it on its mount
                    if e.errno != errno.EXDEV:
                        raise
                    os.rename(p, os.path.join(os.path.dirname(p), os.path.basename(aside)))
        self.build(self.comfy, small)
        # Give every folder of the pod a time through the mount: a FUSE mount (MooseFS) may show
        # attributes cached from before the rebuild for a second, and the snapshot must see the truth.
        for dirpath, _, _ in sorted(os.walk(self.pod_parent), reverse=True):
            os.utime(dirpath, ns=(1_690_000_000_000_000_000, 1_690_000_000_000_000_000))
        self.settle()
        time.sleep(self.attr_cache_s)


class Runner:
    def __init__(self, work: str) -> None:
        home = os.path.join(work, "home")
        os.makedirs(home, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("COMFY")}
        self.env.update(HOME=home, XDG_CACHE_HOME=os.path.join(home, ".cache"),
                        XDG_DATA_HOME=os.path.join(home, ".local/share"),
                        COMFY_MIGRATE_CACHE=os.path.join(home, "digests.sqlite"), PYTHONPATH=ROOT)
        self.calls = 0

    def cli(self, sc: Scenario, *args: str, crash: int = 0, env: Optional[Dict[str, str]] = None) -> Tuple[int, str]:
        env = dict(self.env, **(env or {}))
        if crash:
            env["COMFY_MIGRATE_CRASH_AT"] = str(crash)
        cmd = [sys.executable, "-m", "migrate", *args]
        if args[0] in ("plan", "run"):
            cmd += ["--comfyui", sc.comfy, "--target", sc.store]
        elif args[0] in ("rollback", "verify", "purge"):
            cmd += ["--target", sc.store] + (["--comfyui", sc.comfy] if args[0] in ("verify", "purge") else [])
        self.calls += 1
        p = subprocess.run(sc.prefix + cmd, env=env, capture_output=True, text=True, timeout=600)
        rc = p.returncode
        if sc.prefix and rc == 128 + signal.SIGKILL:      # killed under the container's shell
            rc = -signal.SIGKILL
        return rc, p.stdout + p.stderr


def link_bytes(sc: Scenario) -> Dict[str, bytes]:
    """What each in-tree symlink of the pod loads (followed): the bytes, for those that lead to a file."""
    out = {}
    for rel in LINKS:
        p = os.path.join(sc.comfy, "models", rel)
        if os.path.islink(p) and os.path.isfile(p):
            with open(p, "rb") as f:
                out[rel] = f.read()
    return out


def check_links(sc: Scenario, want: Dict[str, bytes], what: str) -> List[str]:
    """Every in-tree symlink that loaded a model before still loads its bytes (issue 20: a kill
    between a source's removal and the link's re-pointing left it dangling)."""
    got = link_bytes(sc)
    return [f"{what}: symlink {rel} " + ("dangles" if rel not in got else "loads other bytes")
            for rel, data in want.items() if got.get(rel) != data]


def check_back(sc: Scenario, before: Dict[str, tuple], what: str) -> List[str]:
    # rclone shows a file written seconds ago (a source copied back) with mtime "now" on any open
    # until it has uploaded it: compare once the mount has settled, as reset() does.
    sc.settle()
    time.sleep(sc.attr_cache_s)
    errs = [f"{what}: pod differs: {d}" for d in diff(before, snapshot(sc.pod_parent))[:5]]
    errs += [f"{what}: left in the store: {p}" for p in store_leftovers(sc.store)[:5]]
    return errs + [f"{what}: {e}" for e in sc.check()]


def round_trip(r: Runner, sc: Scenario) -> Tuple[List[str], str]:
    sc.reset()
    before = snapshot(sc.pod_parent)
    links = link_bytes(sc)
    errs: List[str] = []
    rc, out = r.cli(sc, "plan", "--format", "json")
    doc = json.loads(out[out.index("{"):]) if rc == 0 and "{" in out else {}
    if rc != 0:
        errs.append(f"plan exit {rc}: {out[-300:]}")
    stays = {os.path.relpath(a["source"], os.path.join(sc.comfy, "models")): a["reason"] for a in doc.get("actions", [])
             if a["action"] == "conflict"}
    if doc and set(stays) != set(sc.stays):
        errs.append(f"plan: these stay {sorted(stays)}, expected {sorted(sc.stays)}")
    rc, out = r.cli(sc, "run", "--yes", "--format", "json")
    rep = json.JSONDecoder().raw_decode(out[out.index("{"):])[0] if "{" in out else {}
    if rc != (1 if sc.stays else 0) or sorted(s["why"] for s in rep.get("stayed", [])) != sorted(sc.stays.values()):
        errs.append(f"run exit {rc}{' (1 expected: the stayed names only)' if sc.stays else ''}: {out[-400:]}")
    errs += check_links(sc, links, "round trip, after the run")
    rc, out = r.cli(sc, "verify")
    if rc != 0:
        errs.append(f"verify exit {rc}: {out[-400:]}")
    rc, out = r.cli(sc, "run", "--yes")
    if rc not in sc.run_ok or "nothing to do" not in out:
        errs.append(f"second run did something (exit {rc}): {out[-300:]}")
    rc, out = r.cli(sc, "rollback", "--yes")
    if rc != 0:
        errs.append(f"rollback exit {rc}: {out[-400:]}")
    errs += check_back(sc, before, "round trip")
    acts = doc.get("actions", [])
    how = sorted({f"{a['action']}:{a['method']}:{a['source_after']}" for a in acts if a["action"] != "skip"})
    tfs = doc.get("target_filesystem", {})
    summary = (f"{tfs.get('type', '?')}; mtime step {tfs.get('mtime_step_ns', '?')} ns; "
               f"hardlinks {tfs.get('hardlink')}; symlinks {tfs.get('symlink')}; stable inodes "
               f"{tfs.get('stable_inode')}; " + ", ".join(how))
    return errs, summary


def purge_trips(r: Runner, sc: Scenario) -> List[str]:
    """run -> rollback, again and again, every other time with `purge --permanent` between them: every
    source then comes back from the store's copy (read seconds after the run wrote it). Each ends
    exactly as before, with nothing of ours left in the store."""
    errs: List[str] = []
    for i in range(sc.purge_trips):
        sc.reset(small=True)
        before = snapshot(sc.pod_parent)
        rc, out = r.cli(sc, "run", "--yes")
        if rc not in sc.run_ok:
            errs.append(f"trip {i}: run exit {rc}: {out[-300:]}")
        if i % 2 == 0:
            rc, out = r.cli(sc, "purge", "--permanent", "--yes")
            if rc != 0:
                errs.append(f"trip {i}: purge exit {rc}: {out[-300:]}")
        rc, out = r.cli(sc, "rollback", "--yes")
        if rc != 0:
            errs.append(f"trip {i}: rollback exit {rc}: {out[-400:]}")
        errs += check_back(sc, before, f"trip {i} ({'purge, ' if i % 2 == 0 else ''}rollback)")
        if errs:
            break
    return errs


def random_kills(r: Runner, sc: Scenario, seed: int = 20) -> Tuple[List[str], int]:
    """SIGKILL a run at a random moment (not at a record: inside a copy, a rename, the probe), then
    roll back (every other time: continue the run first). Returns (errors, kills that landed)."""
    import random
    rnd = random.Random(seed)
    errs: List[str] = []
    landed = 0
    sc.reset(small=True)
    t0 = time.monotonic()
    r.cli(sc, "run", "--yes")
    took = time.monotonic() - t0
    r.cli(sc, "rollback", "--yes")
    for i in range(sc.random_kills):
        sc.reset(small=True)
        before = snapshot(sc.pod_parent)
        env = dict(r.env)
        cmd = [sys.executable, "-m", "migrate", "run", "--yes", "--comfyui", sc.comfy, "--target", sc.store]
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(0.05, 0.9 * took))
        p.send_signal(signal.SIGKILL)
        rc = p.wait()
        r.calls += 1
        landed += rc == -signal.SIGKILL
        if i % 2:
            rc, out = r.cli(sc, "run", "--yes")
            if rc not in sc.run_ok:
                errs.append(f"random kill {i}, continued: exit {rc}: {out[-300:]}")
        rc, out = r.cli(sc, "rollback", "--yes")
        if rc != 0 and "rolled back already" not in out and "no run" not in out:
            errs.append(f"random kill {i}, rollback: exit {rc}: {out[-300:]}")
        errs += check_back(sc, before, f"random kill {i}")
        if errs:
            break
    return errs, landed


def kill_sweep(r: Runner, sc: Scenario, stride: int, ok: Tuple[int, ...] = (0,)) -> Tuple[List[str], int]:
    """SIGKILL after record N of a run (for every N until a run finishes), then recover; and after
    record M of a rollback, then roll back again. `ok`: the exit codes a finished run may give (1
    where files stay on the pod by design). Returns (errors, kills)."""
    errs: List[str] = []
    kills = 0
    for phase in ("run", "rollback"):
        n = 1
        while True:
            sc.reset(small=True)
            before = snapshot(sc.pod_parent)
            links = link_bytes(sc)
            if phase == "run":
                rc, out = r.cli(sc, "run", "--yes", crash=n)
            else:
                rc, out = r.cli(sc, "run", "--yes")
                if rc not in ok:
                    errs.append(f"run before rollback kill {n}: exit {rc}")
                    break
                rc, out = r.cli(sc, "rollback", "--yes", crash=n)
            if rc != -signal.SIGKILL:
                if rc not in (ok if phase == "run" else (0,)):
                    errs.append(f"{phase} with kill at {n}: exit {rc}: {out[-300:]}")
                break
            kills += 1
            if phase == "run" and n % 2:
                rc, out = r.cli(sc, "run", "--yes")     # continue, verify, then undo
                if rc not in ok:
                    errs.append(f"run killed at {n}, continued: exit {rc}: {out[-300:]}")
                errs += check_links(sc, links, f"run killed at {n}, continued")
                rc, out = r.cli(sc, "verify")
                if rc != 0:
                    errs.append(f"run killed at {n}, continued, verify: exit {rc}: {out[-300:]}")
            rc, out = r.cli(sc, "rollback", "--yes")
            if rc not in (0,) and not (phase == "run" and "rolled back already" in out):
                errs.append(f"{phase} killed at {n}, rollback: exit {rc}: {out[-300:]}")
            errs += check_back(sc, before, f"{phase} killed at record {n}")
            if errs:
                break
            n += stride
    return errs, kills


# --- an exFAT store with 1 MiB clusters, filled to the brim (issue 20) ---------------------------------

BRIM_STAYS = {      # rel -> why it stays on the pod: its name is one name with another there, or refused
    "loras/Style.safetensors": "case-clash", "loras/style.safetensors": "case-clash",
    "checkpoints/Folded.safetensors": "case-clash",
    "loras/what?.safetensors": "name-refused", "loras/a|b.safetensors": "name-refused",
    'vae/say "hi".pt': "name-refused",
}


def wrapped(rel: str, payload: bytes) -> bytes:
    """payload inside a valid file of rel's format (as model_bytes), so the audit holds nothing back."""
    if rel.endswith(".pt"):
        return b"\x80\x02" + payload
    raw = json.dumps({"w": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}}).encode()
    return len(raw).to_bytes(8, "little") + raw + payload


def brim_pod(comfy: str, small_files: int) -> None:
    """MODELS (loras/style.safetensors among them), the names the exFAT store cannot keep apart or
    cannot hold at all (BRIM_STAYS; the store already holds checkpoints/folded.safetensors with
    other bytes), a CJK name (80 characters and an extension: 252 UTF-8 bytes, 92 UTF-16 units) and
    `small_files` files of 3 KB: each takes a 1 MiB cluster in the store."""
    make_pod(comfy)
    models = os.path.join(comfy, "models")
    extra = {rel: rel.encode() * 300 for rel in BRIM_STAYS if rel not in MODELS}
    extra["loras/" + "\u5b57" * 80 + ".safetensors"] = b"cjk" * 1000
    extra.update({f"embeddings/small{i:03}.safetensors": bytes([i % 251]) * 3000 for i in range(small_files)})
    for rel, payload in sorted(extra.items()):
        p = os.path.join(models, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(wrapped(rel, payload))


FILL_HOOK = """
import os
_fill = os.environ.get("CM_VOLUMES_FILL")
if _fill:
    from migrate.disk import fsops
    _write_all = fsops.write_all

    def write_all(fd, data):
        # A copy's first chunk into the store: another writer takes every free byte first, and the
        # filesystem itself answers the copy (ENOSPC).
        if not os.path.exists(_fill) and ".cm-tmp-" in os.readlink(f"/proc/self/fd/{fd}") \\
                and os.fstat(fd).st_dev == os.stat(os.path.dirname(_fill)).st_dev:
            fill(_fill)
        return _write_all(fd, data)

    def fill(path):
        with open(path, "ab", buffering=0) as f:
            for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
                try:
                    while True:
                        f.write(b"\\0" * size)
                except OSError:
                    pass
    fsops.write_all = write_all
"""


def fill_up(path: str) -> None:
    """Write zeros into `path` until its filesystem is full to the last byte."""
    with open(path, "ab", buffering=0) as f:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass


def full_store(r: "Runner", m: "Mounts", plain: str, work: str) -> Tuple[List[str], str]:
    """A store on a small ext4 (no blocks reserved for root) that another writer fills to the brim as
    the run's first copy starts (issue 20): the run stops with exit 4 and the message naming both
    ways on, every name still loads as before (the YAML not switched); then, the disk still full to
    the last byte, `rollback` works (exit 0) and the pod is back exactly. Again: stopped, space
    freed, `run` continues the same run, verify, the disk filled again, one `rollback` undoes all."""
    mnt = m.loop_image("ext4-full", 16, ["mkfs.ext4", "-q", "-F", "-m", "0"], ["mount"])
    sc = Scenario("store ext4 filled to the brim", os.path.join(plain, "full"), os.path.join(mnt, "models"),
                  "ext4 16 MiB")
    os.makedirs(sc.pod_parent, exist_ok=True)
    hook = os.path.join(work, "fill-hook")
    os.makedirs(hook, exist_ok=True)
    with open(os.path.join(hook, "sitecustomize.py"), "w") as f:
        f.write(FILL_HOOK)
    filler = os.path.join(mnt, "filler")
    fill_env = {"PYTHONPATH": hook + os.pathsep + r.env.get("PYTHONPATH", ""), "CM_VOLUMES_FILL": filler}
    errs: List[str] = []
    states = []
    for then in ("rollback", "run"):
        sc.reset()
        if os.path.exists(filler):
            os.unlink(filler)
        before = snapshot(sc.pod_parent)
        links = link_bytes(sc)
        yaml_before = open(os.path.join(sc.comfy, "extra_model_paths.yaml"), "rb").read()
        rc, out = r.cli(sc, "run", "--yes", env=fill_env)
        if rc != 4 or "free space, then `comfy-migrate run` (continues this run) or `comfy-migrate rollback` " \
                      "(undoes it)" not in out or "Traceback" in out:
            errs.append(f"{then}: the run on a disk that filled: exit {rc}, not 4 with its message: {out[-300:]}")
        if not os.path.exists(filler):
            errs.append(f"{then}: the filler never ran")
        if open(os.path.join(sc.comfy, "extra_model_paths.yaml"), "rb").read() != yaml_before:
            errs.append(f"{then}: the YAML was switched by a stopped run")
        errs += [f"{then}: stopped run: pod differs: {d}" for d in diff(before, snapshot(sc.pod_parent))[:5]]
        fill_up(filler)
        if then == "run":
            os.unlink(filler)
            rc, out = r.cli(sc, "run", "--yes")
            if rc != 0 or "(continued)" not in out:
                errs.append(f"run after freeing space: exit {rc}, continued: {'(continued)' in out}: {out[-300:]}")
            errs += check_links(sc, links, "run continued")
            rc, out = r.cli(sc, "verify")
            if rc != 0:
                errs.append(f"verify after the continued run: exit {rc}: {out[-300:]}")
            fill_up(filler)
        states.append(os.statvfs(mnt).f_bavail)
        rc, out = r.cli(sc, "rollback", "--yes")
        if rc != 0:
            errs.append(f"{then}: rollback on the full store: exit {rc}: {out[-300:]}")
        rc, out = r.cli(sc, "rollback", "--yes")
        if rc != 0 or "rolled back already" not in out:
            errs.append(f"{then}: a second rollback: exit {rc}: {out[-300:]}")
        os.unlink(filler)
        errs += check_back(sc, before, f"{then}: after the rollback on the full store")
        runs = os.path.join(sc.store, ".comfy-migrate", "runs")
        logs = [n for n in os.listdir(runs) if not n.endswith(".rollback.jsonl")] if os.path.isdir(runs) else []
        if len(logs) != 1:
            errs.append(f"{then}: {len(logs)} run logs, not one (a second run instead of the first continued)")
        shutil.rmtree(sc.store, ignore_errors=True)
    return errs, (f"run exit 4 at the first copy, rollback on the full disk ({max(states) if states else '?'} "
                  "blocks free) exit 0, or run continued then rollback: exact")


def brim_scenarios(r: "Runner", m: "Mounts", plain: str, only: str, stride: int) -> List[Tuple[str, List[str], str]]:
    """An exFAT store (`mkfs.exfat -c 1M`) holding a filler file that leaves it 48 MiB free: a pod
    whose bytes fit but whose allocation does not is refused with exit 4 before the first byte; one
    that just fits (the plan's allocation plus its reserve one cluster short of the free space, or
    less) runs (exit 1: the case-clashing and refused names stay, every other name placed), verifies,
    and rolls back exactly. Returns (name, errors, summary) per scenario."""
    names = ("exFAT 1 MiB clusters, to the brim: allocation does not fit",
             "exFAT 1 MiB clusters, to the brim: just fits",
             "exFAT 1 MiB clusters, to the brim: kills")
    if only and not any(only in n for n in names):
        return []
    mnt = m.loop_image("exfat-1m", 96, ["mkfs.exfat", "-c", "1M"], ["mount.exfat-fuse"])
    store = os.path.join(mnt, "models")
    sc = Scenario(names[0], os.path.join(plain, "brim"), store, "exFAT 1 MiB")
    os.makedirs(sc.pod_parent, exist_ok=True)
    out: List[Tuple[str, List[str], str]] = []

    def fresh(small: int) -> None:
        sc.build = lambda comfy, _small: brim_pod(comfy, small)
        sc.reset()
        os.makedirs(os.path.join(store, "checkpoints"))
        with open(os.path.join(store, "checkpoints", "folded.safetensors"), "wb") as f:
            f.write(model_bytes("checkpoints/folded.safetensors", "z"))
        filler = os.path.join(mnt, "filler")
        if not os.path.exists(filler):          # leave 48 MiB of the volume free
            v = os.statvfs(mnt)
            with open(filler, "wb") as f:
                f.write(b"\0" * (v.f_bavail * v.f_frsize - (48 << 20)))

    def plan_doc() -> dict:
        rc, text = r.cli(sc, "plan", "--format", "json")
        # (exit 4: a plan that does not fit, printed all the same)
        return json.JSONDecoder().raw_decode(text[text.index("{"):])[0] if rc in (0, 4) else {"error": text[-300:]}

    free = lambda: os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize     # noqa: E731

    # What the pod needs without small files: each small file adds a cluster (and the log a little).
    fresh(0)
    base = plan_doc().get("totals", {})
    room = (free() - base.get("store_space_needed", 1 << 40)) >> 20

    # 1. the byte sum fits many times over, the allocation does not: exit 4, nothing changed
    errs: List[str] = []
    fresh(max(room, 0) + 8)
    before = snapshot(sc.pod_parent)
    doc = plan_doc()
    t = dict(doc.get("totals", {}), store_free=free())
    if not t.get("store_space_needed", 0) > t["store_free"] > 4 * t.get("copy_bytes", 1 << 40):
        errs.append(f"plan: expected bytes to fit and allocation not: {t or doc}")
    rc, text = r.cli(sc, "run", "--yes")
    if rc != 4:
        errs.append(f"run exit {rc}, not 4: {text[-300:]}")
    errs += [f"refused run: pod differs: {d}" for d in diff(before, snapshot(sc.pod_parent))[:5]]
    left = [p for p in store_leftovers(store) if p != "checkpoints/folded.safetensors"]
    errs += [f"refused run: left in the store: {p}" for p in left[:5]]
    out.append((names[0], errs, f"{t.get('copy_bytes')} bytes to copy need {t.get('store_space_needed')} of "
                                f"{t.get('store_free')} free"))

    # 2. just fits: the most small files whose allocation (and the reserve) still fits
    errs = []
    small = room
    while small > 0:
        fresh(small)
        doc = plan_doc()
        t = dict(doc.get("totals", {}), store_free=free())
        if t.get("store_space_needed", 1 << 40) <= t["store_free"]:
            break
        small -= 1
    before = snapshot(sc.pod_parent)
    stays = {os.path.relpath(a["source"], os.path.join(sc.comfy, "models")): a["reason"] for a in doc.get("actions", [])
             if a["action"] == "conflict"}
    if set(stays) != set(BRIM_STAYS):
        errs.append(f"plan: these stay {sorted(stays)}, expected {sorted(BRIM_STAYS)}")
    margin = t.get("store_free", 0) - t.get("store_space_needed", 0)
    rc, text = r.cli(sc, "run", "--yes", "--format", "json")
    rep = json.JSONDecoder().raw_decode(text[text.index("{"):])[0] if "{" in text else {}
    if rc != 1 or rep.get("problems") or sorted(s["why"] for s in rep.get("stayed", [])) != sorted(BRIM_STAYS.values()):
        errs.append(f"run exit {rc} (1 expected: the stayed names only): {text[-400:]}")
    lower = {n.lower(): n for n in os.listdir(os.path.join(store, "loras"))} if os.path.isdir(os.path.join(store, "loras")) else {}
    if "style.safetensors" in lower:
        errs.append(f"the store holds {lower['style.safetensors']}: loras/style.safetensors would load its bytes")
    rc, text = r.cli(sc, "verify")
    if rc != 0:
        errs.append(f"verify exit {rc}: {text[-300:]}")
    used = free()
    rc, text = r.cli(sc, "rollback", "--yes")
    if rc != 0:
        errs.append(f"rollback exit {rc}: {text[-300:]}")
    errs += [f"rollback: pod differs: {d}" for d in diff(before, snapshot(sc.pod_parent))[:5]]
    left = [p for p in store_leftovers(store) if p != "checkpoints/folded.safetensors"]
    errs += [f"rollback: left in the store: {p}" for p in left[:5]]
    out.append((names[1], errs, f"{small} small files + {len(MODELS) + 1} models placed, {len(BRIM_STAYS)} names "
                                f"stay; needs {t.get('store_space_needed')} of {t.get('store_free')} free (margin "
                                f"{margin >> 20} MiB), {used >> 20} MiB free after the run"))

    # 3. the full store, killed after every `stride`-th record of a run (continued, or rolled back)
    # and of a rollback (rolled back again): each recovery exact, with the brim's names staying (the
    # store holds no file of its own here: the folded name moves, so three files fewer fit).
    sweep_small = max(small - 3, 0)

    def sweep_pod(comfy: str, _small: bool) -> None:
        brim_pod(comfy, sweep_small)
    sc.build = sweep_pod
    sc.reset()
    doc = plan_doc()
    need = doc.get("totals", {}).get("store_space_needed", 1 << 40)
    room_left = free() - need
    errs = [] if room_left >= 0 else [f"the sweep's pod does not fit: {need} > {free()}"]
    kills = 0
    if not errs:
        errs, kills = kill_sweep(r, sc, stride, ok=(0, 1))
    out.append((names[2], errs, f"{sweep_small} small files, {room_left >> 20} MiB margin; {kills} kills "
                                f"recovered (a kill after every {stride} journal records)"))
    return out


# --- two containers with one host name (issue 20) ---------------------------------------------------

_TRACED_CLI = """
import os, runpy, sys
from migrate.disk import lock
ns, trace = os.readlink('/proc/self/ns/pid'), os.environ['CM_LOCK_TRACE']
real_acquire, real_release = lock.TargetLock.acquire, lock.TargetLock.release
def note(line):
    with open(trace, 'a') as f:
        f.write(line + '\\n')
def acquire(self, *a, **k):
    got = real_acquire(self, *a, **k)
    note(f'in {ns} {got.took_over is not None}')
    return got
def release(self):
    if self._held:
        note(f'out {ns}')
    real_release(self)
lock.TargetLock.acquire, lock.TargetLock.release = acquire, release
sys.argv = ['comfy-migrate'] + sys.argv[1:]
runpy.run_module('migrate', run_name='__main__')
"""


def start_container(m: "Mounts", setup: str = "") -> str:
    """A container with our host name: a mount and a PID namespace of their own (no UTS namespace),
    kept by a sleeping init until the suite ends; `setup` is run in it first. Returns the init's
    pid here, for nsenter. (A namespace lives while a process of it does: a run killed in it leaves
    it, as a container's init outlives a command killed in the container.)"""
    init = subprocess.Popen(["unshare", "--mount", "--propagation", "slave", "--pid", "--fork", "--mount-proc",
                             "--kill-child", "sh", "-c", (setup + " && " if setup else "") + "exec sleep infinity"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    m.undo.append(["kill", "-KILL", str(init.pid)])       # --kill-child: its init goes with it
    while True:
        if init.poll() is not None:
            raise RuntimeError(f"the container did not start: {init.stderr.read()!r}")   # type: ignore[union-attr]
        time.sleep(0.05)
        try:
            with open(f"/proc/{init.pid}/task/{init.pid}/children") as f:
                child = f.read().split()
            if child and os.readlink(f"/proc/{child[0]}/exe").endswith("sleep"):
                return child[0]
        except OSError:
            pass


def in_container(r: Runner, sc: Scenario, container: str, trace: str, lease: int, *args: str,
                 crash: int = 0) -> subprocess.Popen:
    """`comfy-migrate ARGS` run in `container` (start_container), writing a line to `trace` each time
    it takes or gives back the store's lock (its pid namespace, whether it took over)."""
    env = dict(r.env, CM_LOCK_TRACE=trace, COMFY_MIGRATE_LOCK_LEASE=str(lease))
    if crash:
        env["COMFY_MIGRATE_CRASH_AT"] = str(crash)
    r.calls += 1
    return subprocess.Popen(["nsenter", "--target", container, "--mount", "--pid", "--", sys.executable, "-c",
                             _TRACED_CLI, *args, "--comfyui", sc.comfy, "--target", sc.store],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def one_holder_at_a_time(lines: List[str]) -> List[str]:
    """The trace holds `in NS` / `out NS` pairs, or an `in` whose holder was SIGKILLed followed by
    the `in ... True` of the one that took its lock over: never two holders at once."""
    errs, holder = [], None
    for ln in lines:
        what, ns, *rest = ln.split()
        if what == "in":
            if holder is not None and rest != ["True"]:
                errs.append(f"{ns} took the lock while {holder} held it: {lines}")
            holder = ns
        elif holder != ns:
            errs.append(f"{ns} gave back a lock it did not hold: {lines}")
        else:
            holder = None
    return errs


def run_ids(store: str, comfy: str) -> List[str]:
    from migrate.disk.journal import read_log
    runs = os.path.join(store, ".comfy-migrate", "runs")
    out = []
    for n in sorted(os.listdir(runs)):
        if n.endswith(".jsonl") and not n.endswith(".rollback.jsonl"):
            head = read_log(os.path.join(runs, n))[0][0]
            if any(s.startswith(comfy) for s in head.get("sources", [])):
                out.append(n[:-len(".jsonl")])
    return out


def lock_race(r: Runner, m: "Mounts", parent: str, store: str, lease: int = 10) -> Tuple[List[str], str]:
    """Two pods in two containers with one host name (their own PID namespaces: each CLI is pid 2
    there) and one store. They race `run --wait`: one holds the lock, the other waits. Then pod A's
    run is SIGKILLed holding the lock (COMFY_MIGRATE_CRASH_AT): B is refused (exit 5) while A's
    lease runs, and takes the lock over only once it ran out; A, restarted in a new container,
    continues its run. Rolled back, both pods are exactly as before and the store holds nothing."""
    a = Scenario("lock A", os.path.join(parent, "a"), store, "")
    b = Scenario("lock B", os.path.join(parent, "b"), store, "")
    errs: List[str] = []
    trace = os.path.join(parent, "trace")
    for sc in (a, b):
        os.makedirs(sc.pod_parent, exist_ok=True)
        sc.reset()
        big = os.path.join(sc.comfy, "models", "checkpoints", f"big_{sc.name[-1]}.safetensors")
        payload = os.urandom(48 << 20)   # a run that takes a while: a copy each other's would overlap
        head = json.dumps({"w": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}}).encode()
        with open(big, "wb") as f:
            f.write(len(head).to_bytes(8, "little") + head + payload)
        os.utime(os.path.dirname(big), ns=(1_690_000_000_000_000_000,) * 2)
    if os.path.lexists(store):
        shutil.rmtree(store)
    before = {sc.name: snapshot(sc.pod_parent) for sc in (a, b)}

    # 1. racing: never both holders; the second waits and then runs
    box = {"A": start_container(m), "B": start_container(m)}
    procs = [in_container(r, sc, box[sc.name[-1]], trace, lease, "run", "--yes", "--wait", "300") for sc in (a, b)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for sc, p, out in zip((a, b), procs, outs):
        if p.returncode != 0:
            errs.append(f"race: {sc.name} run exit {p.returncode}: {out[-300:]}")
    waited = sum("waiting for the target's lock" in out for out in outs)
    lines = open(trace).read().splitlines()
    errs += one_holder_at_a_time(lines)
    raced = len(lines) // 2
    for sc in (a, b):
        rc, out = r.cli(sc, "verify")
        if rc != 0:
            errs.append(f"race: {sc.name} verify exit {rc}: {out[-300:]}")
    for sc in (b, a):
        for run in reversed(run_ids(store, sc.comfy)):
            rc, out = r.cli(sc, "rollback", run, "--yes")
            if rc != 0:
                errs.append(f"race: {sc.name} rollback {run} exit {rc}: {out[-300:]}")
    for sc in (a, b):
        errs += check_back(sc, before[sc.name], f"race, {sc.name} rolled back")
    if errs:
        return errs, ""

    # 2. A killed holding the lock: B refused before A's lease ran out, takes over after it
    os.unlink(trace)
    p = in_container(r, a, box["A"], trace, lease, "run", "--yes", crash=3)
    out = p.communicate(timeout=600)[0]
    died = time.monotonic()
    if p.returncode != -signal.SIGKILL and p.returncode != 128 + signal.SIGKILL:
        errs.append(f"A was not killed at record 3: exit {p.returncode}: {out[-300:]}")
    p = in_container(r, b, box["B"], trace, lease, "run", "--yes", "--wait", "0")
    out = p.communicate(timeout=600)[0]
    refused_after = time.monotonic() - died
    if p.returncode != 5:
        errs.append(f"B took A's lock {refused_after:.1f} s after A died, inside its {lease} s lease: exit "
                    f"{p.returncode}: {out[-300:]}")
    p = in_container(r, b, box["B"], trace, lease, "run", "--yes", "--wait", str(lease * 6))
    out = p.communicate(timeout=600)[0]
    taken_after = time.monotonic() - died
    if p.returncode != 0 or "took over a stale lock (its heartbeat is" not in out:
        errs.append(f"B did not take over A's expired lock: exit {p.returncode}: {out[-300:]}")
    elif taken_after < lease:
        errs.append(f"B took over {taken_after:.1f} s after A died, before its {lease} s lease ran out")
    p = in_container(r, a, start_container(m), trace, lease, "run", "--yes")   # A's container, restarted: continues
    out = p.communicate(timeout=600)[0]
    if p.returncode != 0:
        errs.append(f"A's run, continued in a new container: exit {p.returncode}: {out[-300:]}")
    lines = open(trace).read().splitlines()
    errs += one_holder_at_a_time(lines)
    for sc in (a, b):
        rc, out = r.cli(sc, "verify")
        if rc != 0:
            errs.append(f"after the take-over: {sc.name} verify exit {rc}: {out[-300:]}")
    for sc in (b, a):
        for run in reversed(run_ids(store, sc.comfy)):
            rc, out = r.cli(sc, "rollback", run, "--yes")
            if rc != 0 and "rolled back already" not in out:
                errs.append(f"after the take-over: {sc.name} rollback {run} exit {rc}: {out[-300:]}")
    for sc in (a, b):
        errs += check_back(sc, before[sc.name], f"after the take-over, {sc.name} rolled back")
    errs += [f"left in the store: {x}" for x in store_leftovers(store)[:5]]
    return errs, (f"race: {raced} lock holds, one at a time, {waited} run(s) waited; A SIGKILLed holding it: B "
                  f"refused (exit 5) {refused_after:.1f} s after, took over {taken_after:.1f} s after "
                  f"(lease {lease} s); A continued in a new PID namespace; both rolled back exactly")


# --- the container's own view of its overlay disk (issue 20) -----------------------------------------

def upper_usage(upper: str) -> Tuple[int, int]:
    """(bytes of the regular files, bytes allocated to everything) in an overlay's upper layer: what
    the container's own disk holds."""
    files = 0
    for dirpath, dirnames, filenames in os.walk(upper):
        for n in filenames:
            st = os.lstat(os.path.join(dirpath, n))
            if stat.S_ISREG(st.st_mode):
                files += st.st_size
    return files, int(sh("du", "-s", "-B1", upper).stdout.split()[0])


DOWNLOADED = "loras/downloaded.safetensors"     # the image holds MODELS; the pod downloaded this one more


def container_overlay(m: "Mounts", name: str, store: str, fuse: bool) -> Scenario:
    """An overlay as a container sees its own disk: ComfyUI and its models (a hardlinked pair among
    them) baked into the image (the lower layer), one model the pod downloaded (the upper layer).
    Each CLI runs in a mount namespace where a private tmpfs hides the host's folder holding the
    upper layer (its `upperdir=` path does not exist there, as in a container) and in a PID
    namespace of its own (a container sees only the merged tree; fuse-overlayfs's process is not
    visible either). The kernel's overlay, or fuse-overlayfs (rootless Podman) with `fuse`. After
    every rollback the container disk (upper layer) must hold no more file bytes than the fresh pod,
    and the image's hardlinked pair must still be one file."""
    base = os.path.join(m.work, "fuse-overlayfs" if fuse else "container-overlay")
    lower, merged = os.path.join(base, "image"), os.path.join(base, "merged")
    host = os.path.join(base, "host")            # the host's folder of the container's layer
    upper, work = os.path.join(host, "upper"), os.path.join(host, "work")
    for d in (lower, merged, upper, work):
        os.makedirs(d)
    sh("mount", "--bind", base, base)          # a peer group of its own: the container sees our remounts
    sh("mount", "--make-shared", base)
    m.undo.append(["umount", base])
    make_pod(os.path.join(lower, "ComfyUI"))

    def mount() -> None:
        if fuse:
            sh("fuse-overlayfs", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", merged)
        else:
            sh("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", merged)

    def build(comfy: str, small: bool) -> None:
        if os.path.lexists(comfy):
            shutil.rmtree(comfy)
        sh("fusermount3", "-u", merged) if fuse else sh("umount", merged)
        for d in (upper, work):
            for _ in range(100):     # fuse-overlayfs may still be emptying its work folder as it exits
                shutil.rmtree(d, ignore_errors=True)
                if not os.path.lexists(d):
                    break
                time.sleep(0.05)
            os.makedirs(d)
        mount()
        with open(os.path.join(comfy, "models", DOWNLOADED), "wb") as f:
            f.write(model_bytes(DOWNLOADED, "g"))
        os.utime(os.path.join(comfy, "models", DOWNLOADED), ns=(1_690_000_000_123_456_789,) * 2)

    mount()
    m.undo.append(["fusermount3", "-u", merged] if fuse else ["umount", merged])
    sc = Scenario(name, merged, store, "fuse-overlayfs" if fuse else "overlay", build)
    # The container: one mount namespace (mounts made here still reach it: slave propagation) where a
    # private tmpfs hides the host's folder of the layers, and one PID namespace, for the whole
    # scenario; every CLI call enters both, as commands run in one container do.
    inside = start_container(m, f"mount -t tmpfs -o size=1m cm-hidden-layers {host}")
    sc.prefix = ["nsenter", "--target", inside, "--mount", "--pid", "--"]
    baseline: Dict[str, Tuple[int, int]] = {}
    real_reset = sc.reset

    def reset(small: bool = False) -> None:
        real_reset(small)
        baseline["fresh"] = upper_usage(upper)

    def check() -> List[str]:
        files, alloc = upper_usage(upper)
        errs = []
        # The image's extra_model_paths.yaml, once rewritten, lives in the upper layer even with its
        # bytes given back (no container can bring the image's copy back): its size is the only growth.
        with open(os.path.join(lower, "ComfyUI", "extra_model_paths.yaml"), "rb") as f:
            yaml_bytes = len(f.read())
        if files > baseline["fresh"][0] + yaml_bytes:
            errs.append(f"the container disk holds {files - baseline['fresh'][0]} more file bytes than before "
                        f"({baseline['fresh'][0]} -> {files}; the YAML: {yaml_bytes})")
        pair = [os.lstat(os.path.join(sc.comfy, "models", p)) for p in UPPER]
        if (pair[0].st_dev, pair[0].st_ino) != (pair[1].st_dev, pair[1].st_ino) or pair[0].st_nlink != 2:
            errs.append("the image's hardlinked pair is no longer one file")
        baseline["last"] = (files, alloc)
        return errs

    sc.reset, sc.check = reset, check         # type: ignore[method-assign]
    sc.image = snapshot(lower)                # type: ignore[attr-defined]
    sc.lower = lower                          # type: ignore[attr-defined]
    sc.usage = baseline                       # type: ignore[attr-defined]
    return sc


def container_summary(r: Runner, sc: Scenario) -> str:
    """What the plan decided, from inside the container: how many image-layer files stay."""
    sc.reset()
    rc, out = r.cli(sc, "plan", "--format", "json")
    doc = json.loads(out[out.index("{"):]) if rc == 0 and "{" in out else {}
    acts = [a for a in doc.get("actions", []) if a["action"] != "skip"]
    stay = sum("image layer" in a.get("reason", "") or "cannot be told apart" in a.get("reason", "") for a in acts)
    fresh = sc.usage["fresh"]                 # type: ignore[attr-defined]
    last = sc.usage.get("last", fresh)        # type: ignore[attr-defined]
    return (f"{stay} of {len(acts)} model files stay in the image layer (copied to the store, kept by the YAML), "
            f"{len(acts) - stay} set aside; container disk (upper) after the last rollback: {last[0]} file bytes "
            f"/ {last[1]} allocated (a fresh pod: {fresh[0]} / {fresh[1]})")


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def apt_install(*pkgs: str) -> None:
    missing = [p for p in pkgs if sh("dpkg", "-s", p, check=False).returncode != 0]
    if missing:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, capture_output=True, env=env)


class Mounts:
    """Every mount made here, undone in reverse order at the end (also after a failure)."""

    def __init__(self, work: str) -> None:
        self.work = work
        self.undo: List[List[str]] = []

    def moosefs(self) -> Optional[str]:
        if not os.path.exists(MOOSEFS_TOOL):
            print(f"volumes: no MooseFS tool at {MOOSEFS_TOOL}: MooseFS skipped", file=sys.stderr)
            return None
        d = os.path.join(self.work, "mfs")
        sh(MOOSEFS_TOOL, "up", d)
        self.undo.append([MOOSEFS_TOOL, "down", d])
        return os.path.join(d, "mnt")

    def loop_image(self, name: str, size_mb: int, mkfs: List[str], mount: List[str]) -> str:
        img, mnt = os.path.join(self.work, name + ".img"), os.path.join(self.work, name)
        os.makedirs(mnt)
        with open(img, "wb") as f:
            f.truncate(size_mb << 20)
        sh(*mkfs, img)
        dev = sh("losetup", "-f", "--show", img).stdout.strip()    # exfat-fuse wants a block device
        self.undo.append(["losetup", "-d", dev])
        sh(*mount, dev, mnt)
        self.undo.append(["umount", mnt])
        return mnt

    def overlay(self, name: str) -> Tuple[str, str, str]:
        base = os.path.join(self.work, name)
        lower, upper, work, merged = (os.path.join(base, x) for x in ("lower", "upper", "work", "merged"))
        for d in (lower, upper, work, merged):
            os.makedirs(d)
        return lower, upper, merged

    def mount_overlay(self, lower: str, upper: str, merged: str) -> None:
        sh("mount", "-t", "overlay", "overlay", "-o",
           f"lowerdir={lower},upperdir={upper},workdir={os.path.join(os.path.dirname(upper), 'work')}", merged)

    def rclone(self, name: str) -> Tuple[str, Callable[[], None]]:
        """`rclone mount` of a local folder with --vfs-cache-mode writes (uploads 5 s after close):
        its mount point and a function waiting until nothing written is still to be uploaded."""
        back, mnt, cache = (os.path.join(self.work, f"{name}-{x}") for x in ("back", "mnt", "cache"))
        for d in (back, mnt, cache):
            os.makedirs(d)
        sh("rclone", "mount", back, mnt, "--vfs-cache-mode", "writes", "--cache-dir", cache,
           "--config", os.path.join(self.work, "rclone.conf"), "--daemon")
        self.undo.append(["fusermount3", "-u", mnt])
        for _ in range(100):
            if os.path.ismount(mnt):
                break
            time.sleep(0.1)
        meta = os.path.join(cache, "vfsMeta")

        def settle() -> None:
            for _ in range(300):
                dirty = False
                for dirpath, _, files in os.walk(meta):
                    for f in files:
                        try:
                            with open(os.path.join(dirpath, f)) as fh:
                                dirty = dirty or json.load(fh).get("Dirty") is True
                        except (OSError, ValueError):
                            dirty = True
                if not dirty:
                    return
                time.sleep(0.2)
        return mnt, settle

    def sshfs(self, name: str) -> Optional[str]:
        """sshfs over ssh to this machine (an sshd of our own on a free port, key login)."""
        import socket
        base = os.path.join(self.work, name)
        back, mnt = os.path.join(base, "back"), os.path.join(base, "mnt")
        os.makedirs(back)
        os.makedirs(mnt)
        key, host_key = os.path.join(base, "id"), os.path.join(base, "host")
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host_key)
        shutil.copy(key + ".pub", os.path.join(base, "authorized_keys"))
        with socket.socket() as so:
            so.bind(("127.0.0.1", 0))
            port = so.getsockname()[1]
        conf = os.path.join(base, "sshd_config")
        with open(conf, "w") as f:
            f.write(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPermitRootLogin yes\n"
                    f"AuthorizedKeysFile {base}/authorized_keys\nStrictModes no\nPasswordAuthentication no\n"
                    f"PidFile {base}/sshd.pid\nSubsystem sftp internal-sftp\nUsePAM no\n")
        os.makedirs("/run/sshd", exist_ok=True)
        sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", conf], stderr=subprocess.DEVNULL)
        self.undo.append(["kill", str(sshd.pid)])
        for _ in range(50):
            r = sh("sshfs", "-o", f"port={port},IdentityFile={key},StrictHostKeyChecking=no,"
                   "UserKnownHostsFile=/dev/null,BatchMode=yes", f"root@127.0.0.1:{back}", mnt, check=False)
            if r.returncode == 0:
                self.undo.append(["fusermount3", "-u", mnt])
                return mnt
            time.sleep(0.2)
        print(f"volumes: sshfs did not mount ({r.stderr.strip()[-200:]}): sshfs skipped", file=sys.stderr)
        return None

    def mergerfs(self, name: str) -> str:
        """mergerfs over two folders of this disk (inode numbers from path hashes)."""
        a, b, mnt = (os.path.join(self.work, f"{name}-{x}") for x in ("a", "b", "mnt"))
        for d in (a, b, mnt):
            os.makedirs(d)
        sh("mergerfs", "-o", "category.create=ff,cache.files=off", f"{a}:{b}", mnt)
        self.undo.append(["fusermount3", "-u", mnt])
        return mnt

    def close(self) -> None:
        for cmd in reversed(self.undo):
            if sh(*cmd, check=False).returncode != 0 and cmd[0] == "umount":
                sh("umount", "-l", cmd[1], check=False)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="run the scenarios whose name contains this")
    ap.add_argument("--stride", type=int, default=0, help="kill after every Nth record (default: every record "
                    "where the store is on the volume and the pod on the machine's disk, the RunPod case; every "
                    "third where the pod is on the volume too, to stay well under 30 minutes on 2 cores)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("volumes: skipped: not root (loop and FUSE mounts need root)")
        return 0
    if not os.path.exists("/dev/fuse"):
        print("volumes: skipped: no /dev/fuse")
        return 0
    apt_install("exfat-fuse", "exfatprogs")
    started = time.monotonic()
    work = tempfile.mkdtemp(prefix="cm-volumes-")
    m = Mounts(work)
    rows, failed = [], 0
    try:
        plain = os.path.join(work, "ext4")          # the machine's own disk (ext4 here)
        os.makedirs(plain)
        mfs = m.moosefs()
        exfat = m.loop_image("exfat", 96, ["mkfs.exfat"], ["mount.exfat-fuse"])
        ext4s = m.loop_image("ext4-I128", 64, ["mkfs.ext4", "-q", "-F", "-I", "128"], ["mount"])
        lower, upper, merged = m.overlay("overlay")
        # the image holds all but loras/style's pair (downloaded by the pod: the upper layer)
        make_pod(os.path.join(lower, "ComfyUI"), only=lambda rel: rel not in UPPER)
        m.mount_overlay(lower, upper, merged)
        m.undo.append(["umount", merged])
        image = snapshot(lower)

        def overlay_pod(comfy: str, small: bool) -> None:
            """The image's files stay in the lower layer; the pod downloaded UPPER into the upper one."""
            if os.path.lexists(comfy):
                shutil.rmtree(comfy)
            sh("umount", merged)
            shutil.rmtree(upper)
            shutil.rmtree(os.path.join(os.path.dirname(upper), "work"))
            os.makedirs(upper)
            os.makedirs(os.path.join(os.path.dirname(upper), "work"))
            m.mount_overlay(lower, upper, merged)
            make_pod(comfy, only=lambda rel: rel in UPPER)

        scenarios = []
        if mfs:
            scenarios += [Scenario("pod ext4 -> store MooseFS", os.path.join(plain, "pod1"), f"{mfs}/models", "MooseFS"),
                          Scenario("pod on MooseFS -> store MooseFS", f"{mfs}/pod", f"{mfs}/models2", "MooseFS"),
                          Scenario("pod overlay -> store MooseFS", merged, f"{mfs}/models3", "overlay", overlay_pod)]
        scenarios += [Scenario("pod ext4 -> store exFAT", os.path.join(plain, "pod2"), f"{exfat}/models", "exFAT"),
                      Scenario("pod on exFAT -> store exFAT", f"{exfat}/pod", f"{exfat}/models2", "exFAT"),
                      Scenario("pod ext4 -> store ext4 -I 128", os.path.join(plain, "pod3"), f"{ext4s}/models", "ext4 -I 128"),
                      Scenario("pod on ext4 -I 128 -> same", f"{ext4s}/pod", f"{ext4s}/models2", "ext4 -I 128")]
        for on_fuse in (False, True):
            name = (f"container's own view: {'fuse-overlayfs' if on_fuse else 'overlay'} (upper layer hidden), "
                    f"image models -> store {'MooseFS' if mfs else 'ext4'}")
            if args.only and args.only not in name:
                continue
            if on_fuse:
                apt_install("fuse-overlayfs")
            scenarios.append(container_overlay(m, name, f"{mfs or plain}/models-{'fuse' if on_fuse else 'ovl'}", on_fuse))
        # FUSE stores that change mtimes or inode numbers under us (issue 20): mounted only when asked for.
        fuse = []

        def wanted(fs: str) -> bool:
            return not args.only or args.only in f"pod ext4 -> store {fs}" or args.only in f"pod on {fs} -> same"
        if wanted("rclone"):
            apt_install("rclone", "fuse3")
            rcl, settle = m.rclone("rclone")
            fuse.append(rcl)
            scenarios += [Scenario("pod ext4 -> store rclone", os.path.join(plain, "pod4"), f"{rcl}/models", "rclone",
                                   purge_trips=6, random_kills=12),
                          Scenario("pod on rclone -> same", f"{rcl}/pod", f"{rcl}/models2", "rclone",
                                   settle=settle, purge_trips=6, random_kills=12)]
        if wanted("sshfs"):
            apt_install("sshfs", "fuse3", "openssh-server", "openssh-client")
            ssh = m.sshfs("sshfs")
            if ssh:
                fuse.append(ssh)
                scenarios += [Scenario("pod ext4 -> store sshfs", os.path.join(plain, "pod5"), f"{ssh}/models", "sshfs",
                                       purge_trips=2, random_kills=6),
                              Scenario("pod on sshfs -> same", f"{ssh}/pod", f"{ssh}/models2", "sshfs",
                                       purge_trips=2, random_kills=6)]
        if wanted("mergerfs"):
            apt_install("mergerfs", "fuse3")
            mrg = m.mergerfs("mergerfs")
            fuse.append(mrg)
            scenarios += [Scenario("pod ext4 -> store mergerfs", os.path.join(plain, "pod6"), f"{mrg}/models",
                                   "mergerfs", purge_trips=2, random_kills=6),
                          # its hardlinked pair shows two inode numbers: the pair stays on the pod (hidden-hardlink)
                          Scenario("pod on mergerfs -> same", f"{mrg}/pod", f"{mrg}/models2", "mergerfs",
                                   purge_trips=2, random_kills=6, attr_cache_s=1.2,
                                   stays={"loras/style.safetensors": "hidden-hardlink",
                                          "loras/second_name.safetensors": "hidden-hardlink"})]
        r = Runner(work)
        for name, errs, summary in brim_scenarios(r, m, plain, args.only, args.stride or 3):
            failed += bool(errs)
            rows.append((name, "ok" if not errs else "FAILED", 0, 0.0, summary))
            print(f"volumes: {name}: {'ok' if not errs else 'FAILED'}; {summary}", flush=True)
            for e in errs[:8]:
                print(f"    {e}", flush=True)
        extra = [("two PID namespaces, one host name -> store " + ("MooseFS" if mfs else "ext4"),
                  lambda: lock_race(r, m, os.path.join(plain, "containers"), f"{mfs or plain}/models-lock")),
                 ("store ext4 filled to the brim", lambda: full_store(r, m, plain, work))]
        for name, scenario in extra:
            if args.only and args.only not in name:
                continue
            t0 = time.monotonic()
            errs, summary = scenario()
            failed += bool(errs)
            rows.append((name, "ok" if not errs else "FAILED", 0, time.monotonic() - t0, summary))
            print(f"volumes: {name}: {'ok' if not errs else 'FAILED'}; {time.monotonic() - t0:.0f} s; {summary}",
                  flush=True)
            for e in errs[:8]:
                print(f"    {e}", flush=True)
        for sc in scenarios:
            if args.only and args.only not in sc.name:
                continue
            os.makedirs(sc.pod_parent, exist_ok=True)
            t0 = time.monotonic()
            errs, summary = round_trip(r, sc)
            kills = 0
            if not errs:
                errs, kills = kill_sweep(r, sc, args.stride or (3 if sc.pod_parent.startswith(
                    (mfs or "//", exfat, ext4s, *fuse)) else 1), ok=sc.run_ok)
            if not errs and sc.purge_trips:
                errs = purge_trips(r, sc)
                summary += f"; {sc.purge_trips} run -> (purge ->) rollback trips"
            if not errs and sc.random_kills:
                errs, landed = random_kills(r, sc)
                summary += f"; {sc.random_kills} random kills ({landed} landed)"
            if sc.fs_name == "overlay" and snapshot(lower) != image:
                errs.append("the overlay's lower layer changed")
            if hasattr(sc, "image"):
                if snapshot(sc.lower) != sc.image:           # type: ignore[attr-defined]
                    errs.append("the image (lower layer) changed")
                summary = container_summary(r, sc) + "; " + summary
            failed += bool(errs)
            rows.append((sc.name, "ok" if not errs else "FAILED", kills, time.monotonic() - t0, summary))
            print(f"volumes: {sc.name}: {'ok' if not errs else 'FAILED'}; {kills} kills recovered; "
                  f"{time.monotonic() - t0:.0f} s; {summary}", flush=True)
            for e in errs[:8]:
                print(f"    {e}", flush=True)
    finally:
        m.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"volumes: {len(rows) - failed} scenario(s) passed, {failed} failed, {r.calls if rows else 0} CLI calls, "
          f"{time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
