"""comfy-migrate against its peers on the same data, measured alternately in one run (issue 6).

Builds its own data in a temporary folder (large files with a duplicate and a same-size twin, many
small files with duplicates, 100,000 tiny files), installs missing peers with apt-get where it can,
warms the page cache right before every timed command (and checks it with fincore), runs each
command of a row K times in rotating order and prints medians and peer/us ratios (> 1: we are
faster). Always exits 0 (130 on Ctrl-C); the last lines say which issue-6 targets were met.

comfy-migrate is started as .venv/bin/comfy-migrate (no pyenv shim), with HOME, XDG_CACHE_HOME and
COMFY_MIGRATE_CACHE inside the bench folder, so the real digest cache is never touched.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20
GiB = 1 << 30
PEER_PACKAGES = {"xxhsum": "xxhash", "rmlint": "rmlint", "jdupes": "jdupes", "rsync": "rsync",
                 "rclone": "rclone"}


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def sh(cmd: Sequence[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


# --- peers -------------------------------------------------------------------------------------------

def install_peers() -> Dict[str, str]:
    """Install missing peers with apt-get where allowed; returns {tool: note} for those still missing."""
    missing = [t for t in PEER_PACKAGES if shutil.which(t) is None]
    notes: Dict[str, str] = {}
    if missing and shutil.which("apt-get") and os.geteuid() == 0:
        pkgs = sorted({PEER_PACKAGES[t] for t in missing})
        log(f"installing {' '.join(pkgs)} with apt-get")
        r = subprocess.run(f"apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                           f"--no-install-recommends {' '.join(pkgs)}", shell=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            tail = r.stdout.strip().splitlines()
            log("apt-get failed" + (f": {tail[-1]}" if tail else ""))
    for t in PEER_PACKAGES:
        if shutil.which(t) is None:
            notes[t] = f"{t} not installed (apt-get unavailable or failed): its rows are skipped"
    return notes


def version_of(tool: str) -> str:
    flag = {"xxhsum": "-V", "rclone": "version"}.get(tool, "--version")
    try:
        r = subprocess.run([tool, flag], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    line = next((ln for ln in r.stdout.splitlines() if ln.strip()), "?")
    return line.strip()[:60]


# --- the machine -------------------------------------------------------------------------------------

def fs_type(path: str) -> str:
    if shutil.which("findmnt"):
        r = sh(["findmnt", "-n", "-o", "FSTYPE", "--target", path])
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip().splitlines()[-1]
    r = sh(["stat", "-f", "-c", "%T", path])
    return r.stdout.strip() or "?"


def machine(bench_dir: str, shm_dir: Optional[str]) -> List[str]:
    mem = "?"
    cpu = "?"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
                    break
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import xxhash
    lines = [
        f"host: {platform.node()}; {os.cpu_count()} cores ({cpu}); memory {mem}; kernel {platform.release()}",
        f"filesystems: bench data {fs_type(bench_dir)} (a temporary folder); other filesystem "
        f"{fs_type(shm_dir) + ' (a temporary folder in /dev/shm)' if shm_dir else 'none'}",
        f"python {platform.python_version()}, xxhash binding {xxhash.VERSION} (libxxhash {xxhash.XXHASH_VERSION})",
        "peers: " + "; ".join(f"{t}: {version_of(t)}" for t in ["xxhsum", "rmlint", "jdupes", "rsync", "rclone"]
                              if shutil.which(t)),
    ]
    return lines


# --- data --------------------------------------------------------------------------------------------

class Writer:
    """Writes files of incompressible, per-file distinct bytes quickly (one random block, reused)."""

    def __init__(self) -> None:
        self.block = os.urandom(8 * MiB + MiB)

    @staticmethod
    def safetensors_head(size: int) -> bytes:
        """The header of a valid safetensors file of exactly `size` bytes holding one U8 tensor
        (plan and run hold back files the audit finds broken, so the data must be real models)."""
        def header(n: int) -> bytes:
            return json.dumps({"data": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
        width = len(header(size)) + 7 & ~7              # n < size: its header is never longer
        n = size - 8 - width
        return struct.pack("<Q", width) + header(n).ljust(width)

    def write(self, path: str, size: int, seed: int) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            head = self.safetensors_head(size)
            os.write(fd, head)
            size -= len(head)
            done, k = 0, 0
            while done < size:
                n = min(MiB, size - done)
                off = ((seed * 7919 + k * 104729) % (8 * MiB))
                head = f"{seed:010d}:{k:010d}:".encode()
                chunk = (head + self.block[off:off + n])[:n]
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                done += n
                k += 1
        finally:
            os.close(fd)


@dataclass
class Data:
    top: str
    big: str                      # models tree of several large files (a duplicate and a same-size twin)
    big_files: List[str]
    one: str                      # models tree holding only the largest file (a hardlink)
    one_file: str
    small: str                    # N small files, every 10th a duplicate of the one before
    small_files: List[str]
    mig: str                      # pristine migration source (a few large files + 200 small ones)
    mig_files: List[str]


def small_size(i: int) -> int:
    return 1024 + (i * 2654435761) % (15 * 1024)       # 1-16 KiB, deterministic


def build_data(top: str, size_gb: float, nfiles: int) -> Data:
    w = Writer()
    S = int(size_gb * GiB)
    big = os.path.join(top, "big")
    quarter = S // 8 + 4321                                     # not a multiple of the buffer
    specs = [("checkpoints/model-a.safetensors", S // 2 + 1234, 1),
             ("diffusion_models/model-b.safetensors", quarter + 1, 2),
             ("loras/model-c.safetensors", quarter, 3),
             ("vae/model-d-same-size.safetensors", quarter, 4)]
    big_files = []
    for rel, size, seed in specs:
        p = os.path.join(big, rel)
        w.write(p, size, seed)
        big_files.append(p)
    dup = os.path.join(big, "loras/model-c-copy.safetensors")
    shutil.copyfile(big_files[2], dup)
    big_files.append(dup)
    big_files.sort()

    one = os.path.join(top, "one")
    one_file = os.path.join(one, "checkpoints/model-a.safetensors")
    os.makedirs(os.path.dirname(one_file))
    os.link(os.path.join(big, specs[0][0]), one_file)

    small = os.path.join(top, "small")
    small_files = []
    cats = ["loras", "embeddings", "controlnet", "upscale_models"]
    for i in range(nfiles):
        p = os.path.join(small, cats[i % len(cats)], f"set{i // 500:03d}", f"f{i:06d}.safetensors")
        if i % 10 == 9:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            shutil.copyfile(small_files[-1], p)
        else:
            w.write(p, small_size(i), 1000 + i)
        small_files.append(p)

    mig = os.path.join(top, "mig-pristine")
    mig_files = []
    for rel, size, seed in [("checkpoints/m1.safetensors", S // 8, 11), ("loras/m2.safetensors", S // 16, 12),
                            ("vae/m3.safetensors", S // 16, 13)]:
        p = os.path.join(mig, rel)
        w.write(p, size, seed)
        mig_files.append(p)
    for i in range(200):
        p = os.path.join(mig, "embeddings", f"e{i:04d}.safetensors")
        w.write(p, small_size(i), 5000 + i)
        mig_files.append(p)
    os.sync()
    return Data(top, big, big_files, one, one_file, small, small_files, mig, mig_files)


def build_many(top: str, n: int) -> str:
    """n tiny files (1 B - 4 KiB) in folders of 1,000, for the peak-memory row."""
    many = os.path.join(top, "many")
    block = os.urandom(4096)
    for d in range((n + 999) // 1000):
        os.makedirs(os.path.join(many, "loras", f"d{d:03d}"))
    for i in range(n):
        fd = os.open(os.path.join(many, "loras", f"d{i // 1000:03d}", f"t{i:06d}.safetensors"),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        size = 1 + (i * 2654435761) % 4096
        os.write(fd, i.to_bytes(4, "little") + block[:size])
        os.close(fd)
    return many


def build_yaml_pod(top: str, lines: int) -> str:
    """A pod (ComfyUI/models with three small models, an empty store) whose extra_model_paths.yaml has
    `lines` lines: sections sec0.. of a comment, a base_path that does not exist, loras and vae (issue
    15: planning a 100,000-line YAML took 100 s). Returns the ComfyUI folder; built afresh each call."""
    if os.path.lexists(top):
        shutil.rmtree(top)
    comfyui = os.path.join(top, "ComfyUI")
    w = Writer()
    for i, cat in enumerate(("checkpoints", "loras", "vae")):
        w.write(os.path.join(comfyui, "models", cat, f"{cat}-model.safetensors"), 64 * 1024 + i, 9000 + i)
    os.makedirs(os.path.join(top, "store"))
    with open(os.path.join(comfyui, "extra_model_paths.yaml"), "w") as f:
        f.write("".join(f"# section {i}\nsec{i}:\n  base_path: /nonexistent/comfy-bench/dir{i}\n"
                        f"  loras: loras\n  vae: vae\n" for i in range(lines // 5)))
    return comfyui


def yaml_rows(cm: str, top: str, lines: int) -> List[Row]:
    """plan and run on a pod with a `lines`-line YAML, each beside one yaml.safe_load of that YAML
    (how ComfyUI reads it at start-up): peer/us is about 1 / (the parses' worth the command costs)."""
    pod = os.path.join(top, "yaml-pod")
    comfyui = os.path.join(pod, "ComfyUI")
    fresh = lambda: build_yaml_pod(pod, lines) and None
    fresh()
    args = ["--comfyui", comfyui, "--target", os.path.join(pod, "store")]
    py = os.path.join(ROOT, ".venv", "bin", "python")
    load = Cmd("python: yaml.safe_load", [py, "-c", "import sys, yaml; yaml.safe_load(open(sys.argv[1]))",
                                          os.path.join(comfyui, "extra_model_paths.yaml")],
               note="ComfyUI's own read of it")
    load_again = Cmd(load.name, load.argv, note=load.note, prep=fresh)
    return [Row(f"plan, {lines:,}-line extra_model_paths.yaml", [Cmd("comfy-migrate plan", [cm, "plan", *args]), load]),
            Row(f"run, {lines:,}-line extra_model_paths.yaml", [
                Cmd("comfy-migrate run", [cm, "run", *args, "--yes"], prep=fresh), load_again])]


def attach_rows(cm: str, top: str, n: int, env: Dict[str, str]) -> List[Row]:
    """attach at a boot of an attached pod (issue 21: a start script runs it every time): a store of
    n files (2 KiB .pt files; 1 in 20 in a custom-node folder, whose link-backs attach looks up in the
    logs), migrated by `run` (untimed); the YAML removed and attached once (a redeploy); then the
    timed `attach --yes`, which must write nothing. Beside it: the interpreter's start-up."""
    pod = os.path.join(top, "attach-pod")
    comfyui = os.path.join(pod, "ComfyUI")
    store = os.path.join(pod, "store")
    block = os.urandom(2048)
    for i in range(n):
        folder = "insightface" if i % 20 == 0 else "loras"
        path = os.path.join(comfyui, "models", folder, f"d{i // 500:02d}", f"m{i:05d}.pt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:      # a pickle's first bytes: the audit lets it through
            f.write(b"\x80\x02" + i.to_bytes(4, "little") + block)
    os.makedirs(store)
    args = ["--comfyui", comfyui, "--target", store]
    for step in (["run", *args, "--yes"], ["attach", *args, "--yes"]):
        if step[0] == "attach":
            os.unlink(os.path.join(comfyui, "extra_model_paths.yaml"))
        p = subprocess.run([cm, *step], env=env, cwd=top, capture_output=True, text=True)
        if p.returncode != 0:
            return [Row(f"attach, an attached pod ({n:,} files)", [], skipped=f"skipped: {step[0]} exit {p.returncode}: "
                        f"{p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}"[:200])]
    yaml_path = os.path.join(comfyui, "extra_model_paths.yaml")
    with open(yaml_path, "rb") as f:
        text = f.read()
    stat0 = os.stat(yaml_path)

    def unchanged() -> Optional[str]:
        st = os.stat(yaml_path)
        with open(yaml_path, "rb") as f:
            same = f.read() == text
        return None if same and (st.st_ino, st.st_mtime_ns) == (stat0.st_ino, stat0.st_mtime_ns) else "the YAML changed"

    py = os.path.join(ROOT, ".venv", "bin", "python")
    return [Row(f"attach, an attached pod ({n:,} files in the store)", [
        Cmd("comfy-migrate attach --yes", [cm, "attach", *args, "--yes"], check=unchanged,
            note="target < 1 s; writes nothing"),
        Cmd("python -c pass", [py, "-c", "pass"], note="the interpreter's start-up")])]


def hashes_row(cm: str, d: "Data", have: Dict[str, bool], notes: Dict[str, str]) -> "Row":
    """The tree of large files hashed with xxh3, SHA-256 and BLAKE3 in one read (the default), against
    the tools that compute one of them: openssl (SHA-256 with the CPU's SHA extensions), sha256sum
    (coreutils: without them here), b3sum where installed, xxhsum -H2."""
    bigf = lambda: d.big_files
    b3sum = shutil.which("b3sum")
    return Row("hash a tree of large files: xxh3 + SHA-256 + BLAKE3", [
        Cmd("comfy-migrate scan --no-cache", [cm, "scan", "--no-cache", "--format", "json", "--source", d.big],
            warm_files=bigf),
        Cmd("openssl dgst -sha256", ["openssl", "dgst", "-sha256", *d.big_files] if shutil.which("openssl") else None,
            warm_files=bigf, note="SHA-256 alone"),
        Cmd("sha256sum", ["sha256sum", *d.big_files], warm_files=bigf, note="SHA-256 alone"),
        Cmd("b3sum", [b3sum, *d.big_files] if b3sum else None, warm_files=bigf,
            note="BLAKE3 alone" if b3sum else "not installed"),
        Cmd("xxhsum -H2", ["xxhsum", "-q", "-H2", *d.big_files] if have["xxhsum"] else None,
            warm_files=bigf, note=notes.get("xxhsum", "")),
    ])


def tree_files(root: str) -> List[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        out += [os.path.join(dirpath, f) for f in sorted(filenames)]
    return out


# --- timing ------------------------------------------------------------------------------------------

def warm(files: Sequence[str]) -> float:
    """cat the files to /dev/null right before a timed command; return the cached fraction of the
    files of 1 MiB or more, per fincore (1.0 when fincore is missing or there are none)."""
    if not files:
        return 1.0
    subprocess.run(["xargs", "-0", "cat"], input="\0".join(files).encode(), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    big = [f for f in files if os.path.getsize(f) >= MiB]
    if not big or not shutil.which("fincore"):
        return 1.0
    r = sh(["fincore", "-b", "-n", "-o", "RES,SIZE", *big])
    res = size = 0
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            res += int(parts[0])
            size += int(parts[1])
    return res / size if size else 1.0


@dataclass
class Sample:
    seconds: float
    maxrss_kib: int
    rc: int
    err: str


def timed(cmd: Sequence[str], env: Dict[str, str], cwd: str) -> Sample:
    with tempfile.TemporaryFile() as errf:
        t0 = time.perf_counter()
        p = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=errf, env=env, cwd=cwd)
        _, status, ru = os.wait4(p.pid, 0)
        secs = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        errf.seek(0)
        err = errf.read().decode("utf-8", "replace")
    return Sample(secs, ru.ru_maxrss, p.returncode, err)


@dataclass
class Cmd:
    name: str
    argv: Optional[Sequence[str]]               # None: skipped
    note: str = ""
    ok_codes: Tuple[int, ...] = (0,)
    prep: Optional[Callable[[], None]] = None   # untimed, before warming
    warm_files: Optional[Callable[[], List[str]]] = None
    check: Optional[Callable[[], Optional[str]]] = None   # untimed, after: a failure message or None
    samples: List[Sample] = field(default_factory=list)
    failure: str = ""
    cached: List[float] = field(default_factory=list)

    def median(self) -> Optional[float]:
        good = [s.seconds for s in self.samples]
        return statistics.median(good) if good and not self.failure else None


@dataclass
class Row:
    title: str
    cmds: List[Cmd]
    skipped: str = ""

    def us(self) -> Optional[Cmd]:
        return self.cmds[0] if self.cmds else None


def measure(row: Row, runs: int, env: Dict[str, str], cwd: str) -> None:
    live = [c for c in row.cmds if c.argv is not None]
    log(f"{row.title}: {runs} runs of {', '.join(c.name for c in live)}")
    for k in range(runs):
        order = live[k % len(live):] + live[:k % len(live)] if live else []
        for c in order:
            if c.failure:
                continue
            if c.prep:
                c.prep()
            if c.warm_files is not None:
                c.cached.append(warm(c.warm_files()))
            s = timed(c.argv, env, cwd)
            if s.rc not in c.ok_codes:
                c.failure = f"exit {s.rc}: {s.err.strip().splitlines()[-1] if s.err.strip() else ''}"[:120]
                continue
            problem = c.check() if c.check else None
            if problem:
                c.failure = problem
                continue
            c.samples.append(s)


# --- the run -----------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=float, default=2.0, help="GB of large files to hash (default 2)")
    ap.add_argument("--files", type=int, default=10_000, help="small files (default 10,000)")
    ap.add_argument("--many", type=int, default=100_000, help="tiny files for the peak-memory row (default 100,000)")
    ap.add_argument("--runs", type=int, default=5, help="runs of each command, alternating (default 5)")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where to build the data (default /tmp)")
    ap.add_argument("--out", help="also write the table as Markdown to this file")
    ap.add_argument("--moosefs-mib", type=int, default=1024,
                    help="MiB of the pod migrated onto MooseFS (default 1024; the row needs root and /dev/fuse)")
    ap.add_argument("--yaml-lines", type=int, default=100_000,
                    help="lines of the YAML of the plan/run rows (default 100,000; 0 leaves them out)")
    ap.add_argument("--only-yaml", action="store_true", help="build nothing else, run only the YAML rows")
    ap.add_argument("--attach-files", type=int, default=2000,
                    help="files in the store of the attach row (default 2,000; 0 leaves it out)")
    ap.add_argument("--only-attach", action="store_true", help="build nothing else, run only the attach row")
    ap.add_argument("--only-hashes", action="store_true",
                    help="build only the large files, run only the xxh3 + SHA-256 + BLAKE3 row")
    args = ap.parse_args()
    runs = max(1, args.runs)
    import stat
    if not stat.S_ISCHR(os.stat(os.devnull).st_mode):
        log(f"{os.devnull} is not a character device (something replaced it): fix it first, e.g. "
            f"`rm {os.devnull} && mknod -m 666 {os.devnull} c 1 3`")
        return 1

    cm = os.path.join(ROOT, ".venv", "bin", "comfy-migrate")
    if not os.access(cm, os.X_OK):
        cm = shutil.which("comfy-migrate") or cm
    # A pip install compiles the package's .pyc files; an editable one, with PYTHONDONTWRITEBYTECODE
    # set, would compile every module at every start. Compile once so start-up is the user's.
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(ROOT, "migrate")],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    notes = install_peers()
    have = {t: shutil.which(t) is not None for t in PEER_PACKAGES}

    top = tempfile.mkdtemp(prefix="comfy-bench-", dir=args.dir)
    shm_top = tempfile.mkdtemp(prefix="comfy-bench-", dir="/dev/shm") if os.path.isdir("/dev/shm") else None
    load_start = os.getloadavg()
    started = time.time()
    rows: List[Row] = []
    extra: Dict[str, str] = {}
    volumes: List[str] = []      # MooseFS volumes started here (stopped before the folders go)
    try:
        home = os.path.join(top, "home")
        os.makedirs(home)
        env = dict(os.environ, HOME=home, XDG_CACHE_HOME=os.path.join(home, ".cache"),
                   COMFY_MIGRATE_CACHE=os.path.join(home, ".cache", "comfy-migrate", "digests.sqlite"),
                   RCLONE_CONFIG=os.path.join(home, "rclone.conf"), LC_ALL="C")
        for var in ("COMFYUI_DIR", "COMFY_MIGRATE_SOURCE", "COMFY_MIGRATE_TARGET", "COMFY_MIGRATE_FORMAT",
                    "COMFY_MIGRATE_YAML", "COMFY_MIGRATE_MODE"):
            env.pop(var, None)
        if args.only_attach:
            log(f"building a migrated pod of {args.attach_files} files in {top}")
            for row in attach_rows(cm, top, args.attach_files, env):
                rows.append(row)
                measure(row, runs, env, top)
            print(render(rows, extra)[0])
            return 0
        if args.only_yaml:
            log(f"building a pod with a {args.yaml_lines}-line YAML in {top}")
            for row in yaml_rows(cm, top, args.yaml_lines):
                rows.append(row)
                measure(row, runs, env, top)
            print(render(rows, extra)[0])
            return 0
        log(f"building {args.size:g} GB of large files and {args.files} small files in {top}")
        t0 = time.perf_counter()
        d = build_data(top, args.size, args.files)
        log(f"built in {time.perf_counter() - t0:.1f} s")
        # xxh3 alone: these rows compare with xxhsum -H2 (the hashes row below has all three)
        scan = [cm, "--hashes", "xxh3", "scan", "--no-cache", "--format", "json"]

        # 1. hash a tree of large files
        bigf = lambda: d.big_files
        rows.append(hashes_row(cm, d, have, notes))
        if args.only_hashes:
            measure(rows[-1], runs, env, top)
            print(render(rows, extra)[0])
            return 0
        rows.append(Row("hash a tree of large files (--hashes xxh3)", [
            Cmd("comfy-migrate scan --no-cache", scan + ["--source", d.big], warm_files=bigf),
            Cmd("xxhsum -H2", ["xxhsum", "-q", "-H2", *d.big_files] if have["xxhsum"] else None,
                warm_files=bigf, note=notes.get("xxhsum", "")),
            Cmd("cat > /dev/null", ["cat", *d.big_files], warm_files=bigf, note="the read limit"),
        ]))
        # 2. one large file alone
        onef = lambda: [d.one_file]
        rows.append(Row(f"one large file ({os.path.getsize(d.one_file) / GiB:.2f} GiB)", [
            Cmd("comfy-migrate scan --no-cache", scan + ["--source", d.one], warm_files=onef),
            Cmd("xxhsum -H2", ["xxhsum", "-q", "-H2", d.one_file] if have["xxhsum"] else None,
                warm_files=onef, note=notes.get("xxhsum", "")),
            Cmd("cat > /dev/null", ["cat", d.one_file], warm_files=onef, note="the read limit"),
        ]))
        # start-up: the fixed cost of one process, from an empty models tree (nothing to hash)
        empty_file = os.path.join(top, "empty", "loras", "empty.safetensors")
        os.makedirs(os.path.dirname(empty_file))
        open(empty_file, "wb").close()
        rows.append(Row("start-up (an empty file, nothing to hash)", [
            Cmd("comfy-migrate scan --no-cache", scan + ["--source", os.path.dirname(os.path.dirname(empty_file))]),
            Cmd("xxhsum -H2", ["xxhsum", "-q", "-H2", empty_file] if have["xxhsum"] else None),
        ]))
        # 3. duplicates in the large and the small tree
        allf = lambda: d.big_files + d.small_files
        rows.append(Row(f"find duplicates ({args.size:g} GB + {args.files} small files)", [
            Cmd("comfy-migrate scan --duplicates --no-cache", scan + ["--duplicates", "--source", d.big, "--source",
                                                                    d.small], warm_files=allf),
            # Never point rmlint's -o at /dev/null: it renames an existing output file aside as a
            # "backup" (it did so to /dev/null itself here); --no-backup and a file of our own.
            Cmd("rmlint -T df", ["rmlint", "-T", "df", "--no-backup", "-o", f"fdupes:{top}/rmlint.out", d.big, d.small]
                if have["rmlint"] else None, warm_files=allf, note=notes.get("rmlint", "")),
            Cmd("jdupes -r", ["jdupes", "-r", "-q", d.big, d.small] if have["jdupes"] else None,
                warm_files=allf, note=notes.get("jdupes", "")),
        ]))

        # 4. warm re-scan: fill the cache once, then time; an audit hook counts data files opened.
        fill = timed([cm, "scan", "--source", d.small, "--format", "json"], env, top)
        rescan = Cmd(f"comfy-migrate scan (cached), {args.files} files", [cm, "scan", "--source", d.small,
                                                                          "--format", "json"])
        rows.append(Row("warm re-scan of small files", [rescan]))
        if args.attach_files:
            rows.extend(attach_rows(cm, top, args.attach_files, env))
        if fill.rc != 0:
            rescan.failure = f"first scan failed: exit {fill.rc}"
        opened = count_opens(env, top, d.small)
        extra["opened"] = str(opened)

        # 5. peak memory for many tiny files
        log(f"creating {args.many} tiny files")
        many = build_many(top, args.many)
        memrow = Row(f"peak memory, {args.many} tiny files", [
            Cmd("comfy-migrate scan --no-cache", scan + ["--source", many], warm_files=None)])
        rows.append(memrow)
        if args.yaml_lines > 0:
            rows.extend(yaml_rows(cm, top, args.yaml_lines))

        # 6-7. migrations
        has_run = timed([cm, "run", "--help"], env, top).rc == 0
        src = os.path.join(top, "mig-src")
        dst_same = os.path.join(top, "mig-dst")
        dst_other = os.path.join(shm_top, "mig-dst") if shm_top else None
        nbytes = sum(os.path.getsize(f) for f in d.mig_files)

        def fresh(dst: Optional[str]) -> Callable[[], None]:
            def prep() -> None:
                for p in (src, dst_same, dst_other):
                    if p and os.path.lexists(p):
                        shutil.rmtree(p)
                subprocess.run(["cp", "-a", d.mig, src], check=True)
                os.sync()
            return prep

        def arrived(dst: str) -> Callable[[], Optional[str]]:
            def check() -> Optional[str]:
                got = sum(os.path.getsize(os.path.join(dst, os.path.relpath(f, d.mig)))
                          for f in d.mig_files if os.path.exists(os.path.join(dst, os.path.relpath(f, d.mig))))
                left = [f for f in tree_files(src) if "/.comfy-migrate/" not in f] if os.path.isdir(src) else []
                if got != nbytes:
                    return f"only {got} of {nbytes} bytes arrived"
                if left:
                    return f"{len(left)} source files left behind"
                return None
            return check

        srcf = lambda: tree_files(src)
        mig_title = f"{nbytes / MiB:.0f} MiB in {len(d.mig_files)} files"
        run_note = "" if has_run else "skipped: run not available yet"
        us_run = lambda dst: [cm, "run", "--source", src, "--target", dst, "--yes"] if has_run else None
        rows.append(Row(f"migrate, same filesystem ({mig_title})", [
            Cmd("comfy-migrate run", us_run(dst_same), note=run_note, prep=fresh(dst_same), warm_files=srcf,
                check=arrived(dst_same)),
            Cmd("mv", ["mv", src, dst_same], prep=fresh(dst_same), warm_files=srcf, check=arrived(dst_same)),
        ], skipped="" if has_run else "skipped: run not available yet"))
        if dst_other:
            rows.append(Row(f"migrate, cross filesystem ({fs_type(top)} -> {fs_type(shm_top)}, {mig_title})", [
                Cmd("comfy-migrate run", us_run(dst_other), note=run_note or "copy + verify, source to quarantine",
                    prep=fresh(dst_other), warm_files=srcf, check=arrived(dst_other)),
                Cmd("rsync -a --remove-source-files", ["rsync", "-a", "--remove-source-files", src + "/",
                                                       dst_other + "/"] if have["rsync"] else None,
                    note=notes.get("rsync", ""), prep=fresh(dst_other), warm_files=srcf,
                    check=arrived(dst_other)),
                Cmd("rclone move", ["rclone", "move", "-q", src, dst_other] if have["rclone"] else None,
                    note=notes.get("rclone", ""), prep=fresh(dst_other), warm_files=srcf,
                    check=arrived(dst_other)),
                Cmd("cp -a + rm -rf", ["sh", "-c", 'cp -a "$0" "$1" && rm -rf "$0"', src, dst_other],
                    prep=fresh(dst_other), warm_files=srcf, check=arrived(dst_other)),
            ], skipped="" if has_run else "skipped: run not available yet"))
        else:
            rows.append(Row("migrate, cross filesystem", [], skipped="skipped: no /dev/shm"))

        # 8. a container-disk pod onto a real MooseFS (RunPod's network volumes; issue 14, item 7)
        import moosefs_pod as mfs
        why = mfs.why_not() or ("" if have["rsync"] else "rsync missing") or ("" if has_run else "run not available")
        mfs_title = f"migrate, container disk -> MooseFS ({args.moosefs_mib} MiB in {len(mfs.SHARES)} models)"
        if why:
            log(f"MooseFS row skipped: {why}")
            rows.append(Row(mfs_title, [], skipped=f"skipped: {why}"))
        else:
            mfs_vol = os.path.join(top, "mfs-volume")
            volumes.append(mfs_vol)
            mfs.volume("up", mfs_vol)
            pod_pristine = os.path.join(top, "mfs-pristine", "models")
            pod_src, pod_dst = os.path.join(top, "mfs-pod", "models"), os.path.join(mfs_vol, "mnt", "models")
            mfs.build_pod(pod_pristine, args.moosefs_mib)
            mfs.wait_free(mfs_vol, 2 * args.moosefs_mib * MiB)
            pod_prep = lambda: mfs.fresh(pod_pristine, pod_src, pod_dst, mfs_vol)
            pod_check = lambda: mfs.check(pod_pristine, pod_src, pod_dst)
            pod_files = lambda: mfs.files_of(pod_src)
            argv = mfs.commands(cm, pod_src, pod_dst)
            rows.append(Row(mfs_title, [
                Cmd("comfy-migrate run", argv["comfy-migrate run"], note="copy + verify + fsync, source to quarantine",
                    prep=pod_prep, warm_files=pod_files, check=pod_check),
                Cmd("rsync -a --remove-source-files", argv["rsync -a --remove-source-files"], note="no fsync",
                    prep=pod_prep, warm_files=pod_files, check=pod_check),
            ]))

        for row in rows:
            if row is memrow:
                measure(row, min(runs, 3), env, top)
            else:
                measure(row, runs, env, top)
        extra["digests"] = compare_digests(cm, env, top, d)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        for v in volumes:       # first: nothing below may leave a volume mounted
            subprocess.run([os.path.join(ROOT, "..", "shared", "tools", "moosefs-volume"), "down", v],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        load_end = os.getloadavg()
        desc = machine(top, shm_top)
        for p in (top, shm_top):
            if p:
                shutil.rmtree(p, ignore_errors=True)

    elapsed = time.time() - started
    desc.append(f"load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f} "
                f"(other work on the machine slows every command alike; compare ratios)")
    desc.append(f"{runs} runs per command, alternating in rotating order; page cache warmed with cat right "
                f"before each timed command; bench took {elapsed:.0f} s")
    table_md, summary = render(rows, extra)
    text = "\n".join(["## Machine", *[f"- {ln}" for ln in desc], "", "## Results", table_md, "",
                      "## Targets (issue 6)", *[f"- {ln}" for ln in summary], ""])
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"# scripts/bench, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
                    f"`./scripts/bench --size {args.size:g} --files {args.files} --runs {runs}`\n\n" + text)
    return 0


def count_opens(env: Dict[str, str], cwd: str, root: str) -> int:
    """Run a cached scan in-process under an audit hook; return how many files under root it opened."""
    code = (
        "import os, sys\n"
        "root = sys.argv.pop(1); out = sys.argv.pop(1); n = [0]\n"
        "def hook(ev, a):\n"
        "    if ev == 'open' and isinstance(a[0], (str, bytes)) and os.fsdecode(a[0]).startswith(root + '/'):\n"
        "        n[0] += 1\n"
        "sys.addaudithook(hook)\n"
        "import atexit; atexit.register(lambda: open(out, 'w').write(str(n[0])))\n"
        "from migrate.cli import main\n"
        "sys.argv[0] = 'comfy-migrate'; main()\n"
    )
    out = os.path.join(cwd, "opens.txt")
    py = os.path.join(ROOT, ".venv", "bin", "python")
    subprocess.run([py, "-c", code, root, out, "scan", "--source", root, "--format", "json"], env=env, cwd=cwd,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with open(out) as f:
            return int(f.read())
    except (OSError, ValueError):
        return -1


def compare_digests(cm: str, env: Dict[str, str], cwd: str, d: Data) -> str:
    """Our digests of the large tree against xxhsum -H2 (should be identical)."""
    if not shutil.which("xxhsum"):
        return "not compared (no xxhsum)"
    r = subprocess.run([cm, "scan", "--no-cache", "--source", d.big, "--format", "json"], env=env, cwd=cwd,
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        ours = {os.path.join(root["root"], f["path"]): f["digest"]
                for root in json.loads(r.stdout)["roots"] for f in root["files"]}
    except (ValueError, KeyError):
        return "not compared (scan output unreadable)"
    x = sh(["xxhsum", "-q", "-H2", *d.big_files])
    theirs = {}
    for line in x.stdout.splitlines():
        h, _, p = line.partition("  ")
        theirs[p] = h
    same = sum(1 for p in d.big_files if ours.get(p) and ours.get(p) == theirs.get(p))
    return f"{same} of {len(d.big_files)} digests identical to xxhsum -H2"


def fmt_s(x: Optional[float]) -> str:
    return "-" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")


def render(rows: List[Row], extra: Dict[str, str]) -> Tuple[str, List[str]]:
    lines = ["| task | command | median s | min-max s | peer/us | note |", "|---|---|---:|---:|---:|---|"]
    medians: Dict[Tuple[str, str], Optional[float]] = {}
    mem_mb: Optional[float] = None
    for row in rows:
        us = row.us()
        um = us.median() if us else None
        for c in row.cmds:
            m = c.median()
            medians[(row.title, c.name)] = m
            note = c.failure or c.note
            if c.argv is None and not note:
                note = "skipped"
            if c.cached and min(c.cached) < 0.99:
                note = (note + "; " if note else "") + f"page cache only {min(c.cached):.0%} warm"
            if row.title.startswith("peak memory") and c.samples:
                mem_mb = max(s.maxrss_kib for s in c.samples) * 1024 / 1e6
                note = (note + "; " if note else "") + f"peak RSS {mem_mb:.0f} MB"
            if row.title.startswith("warm re-scan"):
                note = (note + "; " if note else "") + f"opened {extra.get('opened', '?')} data files"
            ratio = "" if c is us else ("-" if m is None or not um else f"{m / um:.2f}")
            span = (f"{min(s.seconds for s in c.samples):.2f}-{max(s.seconds for s in c.samples):.2f}"
                    if c.samples and not c.failure else "-")
            lines.append(f"| {row.title if c is row.cmds[0] else ''} | {c.name} | {fmt_s(m)} | {span} | {ratio} "
                         f"| {note} |")
        if not row.cmds:
            lines.append(f"| {row.title} | - | - | - | - | {row.skipped} |")
    lines.append("")
    lines.append(f"peer/us > 1: we are faster. Digests: {extra.get('digests', '?')}.")

    def get(prefix: str, name: str) -> Optional[float]:
        for (t, n), v in medians.items():
            if t.startswith(prefix) and n.startswith(name):
                return v
        return None

    def verdict(ok: Optional[bool]) -> str:
        return "skipped" if ok is None else ("MET" if ok else "MISSED")

    def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return a / b if a is not None and b else None

    summary = []

    def target(row: str, peer: str, meets: Callable[[float], bool], what: str, unit: str = "x") -> None:
        r = ratio(get(row, "comfy"), get(row, peer))
        summary.append(f"{verdict(None if r is None else meets(r))}: {what}: {'-' if r is None else f'{r:.2f}{unit}'}")

    # the xxh3-only row (the hashes row, first, has the same prefix without "(--hashes xxh3)")
    x3 = "hash a tree of large files (--hashes xxh3)"
    target(x3, "xxhsum", lambda r: r <= 0.8, "tree of large files (--hashes xxh3) <= 0.8x xxhsum -H2")
    target(x3, "cat", lambda r: r <= 1.5, "tree of large files (--hashes xxh3) within 1.5x cat")
    three = "hash a tree of large files: xxh3 + SHA-256 + BLAKE3"
    target(three, "openssl", lambda r: r <= 1.1, "tree with xxh3 + SHA-256 + BLAKE3 <= 1.1x openssl dgst -sha256 "
           "(issue 24)")
    target("one large", "xxhsum", lambda r: r <= 1.05, "one large file <= 1.05x xxhsum -H2")
    boot = get("start-up", "comfy")
    if boot is not None:
        parts = []
        for prefix, what in ((x3, "tree"), ("one large", "one file")):
            us, x = get(prefix, "comfy"), get(prefix, "xxhsum")
            if us is not None and x:
                parts.append(f"{what} {max(us - boot, 0) / x:.2f}x")
        summary.append(f"(information, not a target) our time minus our start-up ({boot:.3f} s), over xxhsum's: "
                       + ", ".join(parts))
    for peer in ("rmlint", "jdupes"):
        target("find dup", peer, lambda r: r < 1, f"duplicates faster than {peer}", "x its time")
    target("migrate, cross", "rsync", lambda r: r <= 1, "cross-filesystem migration no slower than rsync",
           "x its time")
    r = ratio(get("migrate, container disk -> MooseFS", "comfy"), get("migrate, container disk -> MooseFS", "rsync"))
    summary.append(f"{verdict(None if r is None else r <= 0.8)}: container disk -> MooseFS within 0.8x "
                   f"rsync -a --remove-source-files (issues 14, 24): {'-' if r is None else f'{r:.2f}x its time'}")
    m = get("warm re-scan", "comfy")
    opened = extra.get("opened", "?")
    ok = None if m is None else (m < 1 and opened == "0")
    summary.append(f"{verdict(ok)}: warm re-scan reads no file data ({opened} files opened) and takes < 1 s: "
                   f"{fmt_s(m)} s")
    summary.append(f"{verdict(None if mem_mb is None else mem_mb < 200)}: peak memory < 200 MB for the tiny "
                   f"files: {'-' if mem_mb is None else f'{mem_mb:.0f} MB'}")
    for verb in ("plan", "run"):
        us, load = get(f"{verb}, ", "comfy"), get(f"{verb}, ", "python")
        if us is not None and load:
            summary.append(f"(information, not a target) {verb} on the large YAML (issue 15): {us:.1f} s, "
                           f"{us / load:.1f}x one yaml.safe_load of it ({load:.1f} s)")
    return "\n".join(lines), summary


if __name__ == "__main__":
    sys.exit(main())
