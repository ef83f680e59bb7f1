#!/usr/bin/env python3
"""The volume suite (issue 14): the real CLI on real filesystems, as store and as the pod's own volume.

Filesystems: a real MooseFS (../shared/tools/moosefs-volume, what RunPod's network volumes are),
exFAT through exfat-fuse on a loop image (no hardlinks, no symlinks, coarse times), ext4 made with
`mkfs.ext4 -I 128` (whole-second mtimes), and an overlay (a container's root) as the pod's disk.
Each scenario: plan, run, verify, a second run doing nothing, rollback giving the pod back exactly
(paths, bytes, modes, link counts, mtimes as the pod's filesystem keeps them, the YAML) with no model,
temporary, probe or lock left in the store; then SIGKILL after every journal record of a run (then
continue + rollback, or rollback at once) and of a rollback (then rollback again), each checked the
same way. Prints one row per scenario (the README's table is made from it).

Needs root and /dev/fuse; installs exfat-fuse and exfatprogs with apt itself. Otherwise it prints
why and exits 0 (skipped). Usage: scripts/volumes [--only NAME] [--stride N] [--keep]
"""
from __future__ import annotations

import argparse
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

from migrate import fsops  # noqa: E402

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
            "insightface/glint.onnx", "extra_model_paths.yaml")


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
                content = os.readlink(p)
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
                 purge_trips: int = 0, random_kills: int = 0) -> None:
        self.name, self.pod_parent, self.store, self.fs_name = name, pod_parent, store, fs_name
        # settle: wait until the volume holds what was written (rclone uploads a file seconds after
        # it is closed): a pod's files are old, not written a moment before the run.
        self.settle = settle or (lambda: None)
        self.purge_trips, self.random_kills = purge_trips, random_kills
        self.build = build or (lambda comfy, small: make_pod(comfy, (lambda rel: rel in KILL_SET) if small else None))
        self.comfy = os.path.join(pod_parent, "ComfyUI")

    def reset(self, small: bool = False) -> None:
        """A fresh pod (small: the kill sweeps' few files, still with a duplicate, a hardlinked pair,
        a custom-node folder and the user's YAML) and no store."""
        for p in (self.comfy, self.store):
            for attempt in range(100):     # rclone refuses (EIO) to remove a folder it still uploads to
                try:
                    if os.path.lexists(p):
                        shutil.rmtree(p)
                    break
                except OSError:
                    if attempt == 99:
                        raise
                    time.sleep(0.2)
        self.build(self.comfy, small)
        # Give every folder of the pod a time through the mount: a FUSE mount (MooseFS) may show
        # attributes cached from before the rebuild for a second, and the snapshot must see the truth.
        for dirpath, _, _ in sorted(os.walk(self.pod_parent), reverse=True):
            os.utime(dirpath, ns=(1_690_000_000_000_000_000, 1_690_000_000_000_000_000))
        self.settle()


class Runner:
    def __init__(self, work: str) -> None:
        home = os.path.join(work, "home")
        os.makedirs(home, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("COMFY")}
        self.env.update(HOME=home, XDG_CACHE_HOME=os.path.join(home, ".cache"),
                        XDG_DATA_HOME=os.path.join(home, ".local/share"),
                        COMFY_MIGRATE_CACHE=os.path.join(home, "digests.sqlite"), PYTHONPATH=ROOT)
        self.calls = 0

    def cli(self, sc: Scenario, *args: str, crash: int = 0) -> Tuple[int, str]:
        env = dict(self.env)
        if crash:
            env["COMFY_MIGRATE_CRASH_AT"] = str(crash)
        cmd = [sys.executable, "-m", "migrate", *args]
        if args[0] in ("plan", "run"):
            cmd += ["--comfyui", sc.comfy, "--target", sc.store]
        elif args[0] in ("rollback", "verify", "purge"):
            cmd += ["--target", sc.store] + (["--comfyui", sc.comfy] if args[0] in ("verify", "purge") else [])
        self.calls += 1
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        return p.returncode, p.stdout + p.stderr


def check_back(sc: Scenario, before: Dict[str, tuple], what: str) -> List[str]:
    errs = [f"{what}: pod differs: {d}" for d in diff(before, snapshot(sc.pod_parent))[:5]]
    errs += [f"{what}: left in the store: {p}" for p in store_leftovers(sc.store)[:5]]
    return errs


def round_trip(r: Runner, sc: Scenario) -> Tuple[List[str], str]:
    sc.reset()
    before = snapshot(sc.pod_parent)
    errs: List[str] = []
    rc, out = r.cli(sc, "plan", "--format", "json")
    doc = json.loads(out[out.index("{"):]) if rc == 0 and "{" in out else {}
    if rc != 0:
        errs.append(f"plan exit {rc}: {out[-300:]}")
    rc, out = r.cli(sc, "run", "--yes")
    if rc != 0:
        errs.append(f"run exit {rc}: {out[-400:]}")
    rc, out = r.cli(sc, "verify")
    if rc != 0:
        errs.append(f"verify exit {rc}: {out[-400:]}")
    rc, out = r.cli(sc, "run", "--yes")
    if rc != 0 or "nothing to do" not in out:
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
        if rc != 0:
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
            if rc != 0:
                errs.append(f"random kill {i}, continued: exit {rc}: {out[-300:]}")
        rc, out = r.cli(sc, "rollback", "--yes")
        if rc != 0 and "rolled back already" not in out and "no run" not in out:
            errs.append(f"random kill {i}, rollback: exit {rc}: {out[-300:]}")
        errs += check_back(sc, before, f"random kill {i}")
        if errs:
            break
    return errs, landed


def kill_sweep(r: Runner, sc: Scenario, stride: int) -> Tuple[List[str], int]:
    """SIGKILL after record N of a run (for every N until a run finishes), then recover; and after
    record M of a rollback, then roll back again. Returns (errors, kills)."""
    errs: List[str] = []
    kills = 0
    for phase in ("run", "rollback"):
        n = 1
        while True:
            sc.reset(small=True)
            before = snapshot(sc.pod_parent)
            if phase == "run":
                rc, out = r.cli(sc, "run", "--yes", crash=n)
            else:
                rc, out = r.cli(sc, "run", "--yes")
                if rc != 0:
                    errs.append(f"run before rollback kill {n}: exit {rc}")
                    break
                rc, out = r.cli(sc, "rollback", "--yes", crash=n)
            if rc != -signal.SIGKILL:
                if rc != 0:
                    errs.append(f"{phase} with kill at {n}: exit {rc}: {out[-300:]}")
                break
            kills += 1
            if phase == "run" and n % 2:
                rc, out = r.cli(sc, "run", "--yes")     # continue, verify, then undo
                if rc != 0:
                    errs.append(f"run killed at {n}, continued: exit {rc}: {out[-300:]}")
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
                          Scenario("pod on mergerfs -> same", f"{mrg}/pod", f"{mrg}/models2", "mergerfs",
                                   purge_trips=2, random_kills=6)]
        r = Runner(work)
        for sc in scenarios:
            if args.only and args.only not in sc.name:
                continue
            os.makedirs(sc.pod_parent, exist_ok=True)
            t0 = time.monotonic()
            errs, summary = round_trip(r, sc)
            kills = 0
            if not errs:
                errs, kills = kill_sweep(r, sc, args.stride or (3 if sc.pod_parent.startswith(
                    (mfs or "//", exfat, ext4s, *fuse)) else 1))
            if not errs and sc.purge_trips:
                errs = purge_trips(r, sc)
                summary += f"; {sc.purge_trips} run -> (purge ->) rollback trips"
            if not errs and sc.random_kills:
                errs, landed = random_kills(r, sc)
                summary += f"; {sc.random_kills} random kills ({landed} landed)"
            if sc.fs_name == "overlay" and snapshot(lower) != image:
                errs.append("the overlay's lower layer changed")
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
