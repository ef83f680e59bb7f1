#!/usr/bin/env python3
"""Fault-injection trials for comfy-migrate: inject one fault, recover the documented way, check.

Usage: torture.py [--trials N] [--seed S] [--jobs J] [--keep] [-v] [--only KIND,...]

Builds a pod (ComfyUI models tree, a target store, a user YAML), snapshots it, then for each trial
copies the pristine pod (cp -a) into a fresh folder under one temp root, injects one fault, recovers
as the README says (`comfy-migrate run` again, or `comfy-migrate rollback`) and checks invariants:
  - no content lost: every digest of the pristine pod is still stored under the ComfyUI folder or
    the target (state folder included: the YAML's previous bytes live there);
  - after a completed run: every model name resolves in the target first (migrate.core.comfy.search_folders
    with the YAML) to its content, and each content is stored once (one inode per digest);
  - after a rollback: the snapshot (paths, digests, modes, mtimes, symlinks, YAML) is identical;
  - every audit log reads cleanly (migrate.disk.journal.read_log); no `.cm-tmp-` file anywhere.
Two families build their own worlds:
  - fleet: 2-4 pods (own ComfyUI, YAML, HOME, cache and host name in a UTS namespace) with
    overlapping models run at once into one store, one SIGKILLed (at a journal step or a random
    moment); then re-runs and rollbacks of random pods in random order, each checked: every file of
    a pod is at its place or found in the store by its YAML under ComfyUI's rules, no content is
    lost or stored twice (distinct inodes), every log is valid, the catalogue equals a fresh hash of
    the store; finally every pod is rolled back: each as it was, the store without a model file;
  - audit: truncated, trailing-data, LFS-pointer and HTML files among the models: a run leaves
    them untouched at their place and out of the store; rollback restores the snapshot;
  - stale (issue 12; kinds stale-rewrite, stale-reuse, stale-swap): a fact that no longer holds, made
    after a `plan` or `scan` warmed the digest cache, or inside `run` (while it waits for the lock,
    or after its plan under the lock, before its first step):
    models rewritten in place with size and times kept, deleted and recreated with the same size
    and times on their old inode numbers (each trial on its own loop-mounted ext4, which reuses
    freed inodes), two models exchanging names; then run, purge --permanent or not, rollback: no
    content of right before the run is lost after any command, and the rollback gives every name
    its bytes, mode and mtime of right before the run.
  - obstacle (issue 15): something in the way placed between plan and run (a file where the store
    needs a folder, a folder at a destination's name, a read-only source or store folder, a symlinked
    store folder, a long name in conflict); the real `run` (planning again: its preflight refuses
    with exit 3 and nothing changed, or it goes through) or the stale plan executed as it was
    (meeting the obstacle mid-way); then `rollback --dry-run` and `rollback` exit 0 and the pod,
    and any folder behind a symlink, is as it was.
Prints one line per fault kind, then `N passed, M failed`; exits 1 on any failure.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import xxhash  # noqa: E402

from migrate.core import comfy  # noqa: E402
from migrate.disk import fsops  # noqa: E402
from migrate.core.errors import MigrateError  # noqa: E402
from migrate.disk.journal import read_log  # noqa: E402
from migrate.core.model import Method, Policy, Status  # noqa: E402
from migrate.disk.scan import TEMP_MARK, scan_tree  # noqa: E402

STATE = ".comfy-migrate"
YAML_NAME = "extra_model_paths.yaml"
USER_YAML = "# my own paths\nother_ui:\n  base_path: /opt/other\n  checkpoints: models/Stable-diffusion\n"
CONFLICT_REL = "loras/conflict_me.safetensors"
KINDS = ("crash-run-step", "crash-rollback-step", "sigkill-random", "enospc", "eio/eperm",
         "changed-under", "lock", "trash", "hostile", "fleet", "audit", "stale-rewrite", "stale-reuse",
         "stale-swap", "obstacle")
FAMILIES = {"stale": ("stale-rewrite", "stale-reuse", "stale-swap")}     # --only stale: all three

G: dict = {}     # per-process globals: temp roots, pristine facts, measurements


# --- the pod -------------------------------------------------------------------------------------------

def blob(rng: random.Random, size: int) -> bytes:
    """`size` random bytes as the one tensor of a valid safetensors file (the audit keeps anything
    else out of the store)."""
    data = rng.randbytes(size) if hasattr(rng, "randbytes") else bytes(rng.getrandbits(8) for _ in range(size))
    raw = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    return len(raw).to_bytes(8, "little") + raw + data


def build_pod(dest: str) -> None:
    """ComfyUI/ (models, user YAML) and models/ (the target, with a conflict and an identical file)."""
    rng = random.Random(20240501)
    comfy_dir = os.path.join(dest, "ComfyUI")
    models = os.path.join(comfy_dir, "models")
    target = os.path.join(dest, "models")
    t0 = 1_700_000_000_000_000_000
    n = [0]

    def put(root: str, rel: str, data: bytes, mode: int = 0o644) -> None:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        n[0] += 1
        os.utime(path, ns=(t0, t0 + n[0] * 1_000_123))

    folders = ["checkpoints", "loras", "loras/wan", "vae", "text_encoders", "clip", "unet", "diffusion_models",
               "embeddings", "upscale_models", "controlnet", "clip_vision", "my_custom_node/weights"]
    made = []
    for i in range(170):
        folder = folders[i % len(folders)]
        rel = f"{folder}/model_{i:03d}.safetensors"
        data = blob(rng, rng.randint(600, 6000))
        put(models, rel, data, 0o600 if i % 17 == 0 else 0o644)
        made.append((rel, data))
    for i in range(24):   # duplicates, across categories too (legacy clip/unet included)
        src_rel, data = made[rng.randrange(len(made))]
        folder = folders[(i * 5 + 3) % len(folders)]
        put(models, f"{folder}/dup_{i:02d}_{os.path.basename(src_rel)}", data)
    big = [("diffusion_models/big_a.safetensors", 3 << 20), ("unet/big_b.safetensors", 2 << 20),
           ("checkpoints/big_c.safetensors", (3 << 19))]
    for rel, size in big:
        data = blob(rng, size)
        put(models, rel, data)
        made.append((rel, data))
    put(models, "text_encoders/big_b_copy.safetensors", made[-2][1])     # a large duplicate
    # odd names
    put(models, "loras/new\nline.safetensors", blob(rng, 3000))
    put(models, "loras/with  spaces .safetensors", blob(rng, 2500))
    put(models, "checkpoints/sub dir/ünïcødé.safetensors", blob(rng, 2200), 0o755)
    put(models, os.fsdecode(b"loras/bad_\xff_name.safetensors"), blob(rng, 900))     # not UTF-8: skipped
    # not migrated: placeholders, partial downloads, empty, loose files
    put(models, "checkpoints/put_checkpoints_here", b"")
    put(models, "loras/half.safetensors.part", blob(rng, 1500))
    put(models, "vae/empty.safetensors", b"")
    put(models, "loose_at_root.safetensors", blob(rng, 700))
    put(models, "configs/v1-inference.yaml", b"model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n")
    # symlinks: inside, outside, a loop
    os.symlink("../loras/model_001.safetensors", os.path.join(models, "upscale_models/alias.pth"))
    os.symlink("/etc/hostname", os.path.join(models, "vae/outside.safetensors"))
    os.symlink("loop_b.safetensors", os.path.join(models, "embeddings/loop_a.safetensors"))
    os.symlink("loop_a.safetensors", os.path.join(models, "embeddings/loop_b.safetensors"))
    # the target: a conflict (other content under a source's name) and an identical file
    put(models, CONFLICT_REL, blob(rng, 4000))
    put(target, CONFLICT_REL, blob(rng, 4100))
    put(target, "vae/model_003.safetensors", dict(made)["vae/model_003.safetensors"])
    with open(os.path.join(comfy_dir, YAML_NAME), "w") as f:
        f.write(USER_YAML)
    os.utime(os.path.join(comfy_dir, YAML_NAME), ns=(t0, t0 + 42))


# --- facts about trees ---------------------------------------------------------------------------------

def digest_file(path: str) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def walk(root: str, skip_state: bool):
    """(rel, lstat) of every entry under root; skips root/.comfy-migrate when asked."""
    stack = [("", root)]
    while stack:
        rel, path = stack.pop()
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except FileNotFoundError:
            continue
        for e in entries:
            erel = f"{rel}/{e.name}" if rel else e.name
            if skip_state and erel == STATE:
                continue
            st = e.stat(follow_symlinks=False)
            yield erel, e.path, st
            if stat.S_ISDIR(st.st_mode):
                stack.append((erel, e.path))


def snapshot(comfy_dir: str, target: str) -> dict:
    snap = {}
    for role, root in (("comfy", comfy_dir), ("target", target)):
        for rel, path, st in walk(root, skip_state=(role == "target")):
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                snap[(role, rel)] = ("dir", mode)
            elif stat.S_ISLNK(st.st_mode):
                snap[(role, rel)] = ("symlink", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                snap[(role, rel)] = ("file", digest_file(path), mode, st.st_mtime_ns, st.st_size)
            else:
                snap[(role, rel)] = ("other", stat.S_IFMT(st.st_mode))
    ypath = os.path.join(comfy_dir, YAML_NAME)
    snap[("yaml", "bytes")] = open(ypath, "rb").read() if os.path.exists(ypath) else None
    return snap


def diff_snap(a: dict, b: dict, limit: int = 4) -> list:
    out = []
    for k in sorted(set(a) | set(b), key=repr):
        if a.get(k) != b.get(k):
            out.append(f"{k[0]}:{k[1]!r}: {str(a.get(k))[:70]} -> {str(b.get(k))[:70]}")
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def stored_digests(comfy_dir: str, target: str) -> set:
    out = set()
    for root in (comfy_dir, target):
        for _, path, st in walk(root, skip_state=False):
            if stat.S_ISREG(st.st_mode):
                out.add(digest_file(path))
    return out


# --- a trial's world -----------------------------------------------------------------------------------

DELIBERATE = {"conflict", "bad-name", "uncategorised"}     # what the pods hold on purpose (make_pod above)


def only_conflicts_stayed(out: str) -> bool:
    """Whether a run's exit 1 says only that the pods' deliberate files stayed where they are (a
    conflict, a name that is not UTF-8, a model file directly under models/): its summary counts
    nothing else, and no step failed (a failed step is a warning naming its path)."""
    m = re.search(r"^warning: (?:nothing to do, but )?(\d+) model file\(s\) stayed where they are, "
                  r"not in the store \(([^;]*); ", out, re.M)
    failed = re.search(r"^warning: /", out, re.M)
    if not m or failed:
        return False
    kinds = [part.split(" ", 1) for part in m.group(2).split(", ")]
    return all(len(k) == 2 and k[1] in DELIBERATE for k in kinds) and \
        sum(int(k[0]) for k in kinds) == int(m.group(1))


def ran(code: int, out: str) -> int:
    """A run's exit code, 1 for conflicts alone (the pods' deliberate ones) read as 0."""
    return 0 if code == 1 and only_conflicts_stayed(out) else code


class Trial:
    def __init__(self, name: str, cross: bool = False, target_dir: str = None, pod_parent: str = None):
        self.name = name
        base = pod_parent or os.path.join(G["tmp"], "trials")
        self.dir = os.path.join(base, name)
        os.makedirs(self.dir)
        self.comfy = os.path.join(self.dir, "ComfyUI")
        subprocess.run(["cp", "-a", os.path.join(G["pristine"], "ComfyUI"), self.comfy], check=True)
        if target_dir is not None:
            self.target = target_dir
            for e in os.listdir(os.path.join(G["pristine"], "models")):
                subprocess.run(["cp", "-a", os.path.join(G["pristine"], "models", e), target_dir], check=True)
        else:
            tparent = os.path.join(G["other"], name) if cross else self.dir
            os.makedirs(tparent, exist_ok=True)
            self.target = os.path.join(tparent, "models")
            subprocess.run(["cp", "-a", os.path.join(G["pristine"], "models"), self.target], check=True)
        self.models = os.path.join(self.comfy, "models")
        self.yaml = os.path.join(self.comfy, YAML_NAME)
        self.home = os.path.join(self.dir, "home")
        os.makedirs(self.home)
        self.env = dict(PATH=os.environ.get("PATH", "/usr/bin:/bin"), LANG="C.UTF-8", HOME=self.home,
                        XDG_CACHE_HOME=os.path.join(self.home, ".cache"),
                        XDG_DATA_HOME=os.path.join(self.home, ".local/share"),
                        COMFY_MIGRATE_CACHE=os.path.join(self.home, "digests.sqlite"),
                        COMFYUI_DIR=self.comfy, COMFY_MIGRATE_TARGET=self.target,
                        PYTHONPYCACHEPREFIX=os.path.join(G["tmp"], "pycache"))   # compiled once, not per call
        self.expect_digests = set(G["digests"])
        self.notes = []

    def cli(self, *args, crash_at=None, env=None, timeout=120, real=False, pre=None):
        """The CLI (migrate.cli.main) in a forked child of this worker, which has the package imported
        already: the same code path as `comfy-migrate ...` without an interpreter start per call.
        real=True runs `python -m migrate` as a subprocess instead."""
        e = dict(self.env, **(env or {}))
        if crash_at is not None:
            e["COMFY_MIGRATE_CRASH_AT"] = str(crash_at)
        if real:
            p = subprocess.run([sys.executable, "-m", "migrate", "-q", *args], env=e, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                               stdin=subprocess.DEVNULL)
            return p.returncode, p.stdout.decode("utf-8", "replace")
        return fork_cli(["-q", *args], e, os.path.join(self.dir, "cli.out"), timeout, pre)

    def popen(self, *args):
        """The real CLI in the background. Its stderr goes to a file, never a pipe: a pipe nobody
        reads fills at 64 KiB and the CLI then blocks forever in a write (wait() would hang)."""
        self.n_popen = getattr(self, "n_popen", 0) + 1
        with open(os.path.join(self.dir, f"popen{self.n_popen}.err"), "wb") as err:
            return subprocess.Popen([sys.executable, "-m", "migrate", "-q", *args], env=self.env, cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)

    def run(self, **kw):
        """`run --yes`: (exit code, output). The pristine pod's deliberate conflict stays where it
        is, so a clean run exits 1 (README: exit codes); that alone counts here as 0."""
        code, out = self.cli("run", "--yes", **kw)
        return ran(code, out), out

    def rollback(self, **kw):
        return self.cli("rollback", "--yes", **kw)

    def snap(self):
        return snapshot(self.comfy, self.target)

    def logs(self):
        d = os.path.join(self.target, STATE, "runs")
        return sorted(os.path.join(d, n) for n in os.listdir(d)) if os.path.isdir(d) else []

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(os.path.join(G["other"], self.name), ignore_errors=True)

    # -- invariants --
    def check_common(self) -> list:
        errs = []
        missing = self.expect_digests - stored_digests(self.comfy, self.target)
        if missing:
            names = sorted(G["where"].get(d, "?") for d in missing)
            errs.append(f"content lost: {len(missing)} digests, e.g. {names[:3]!r}")
        for log in self.logs():
            try:
                read_log(log)
            except MigrateError as exc:
                errs.append(f"log unreadable: {exc}")
        for root in {self.dir, os.path.dirname(self.target)}:
            for rel, _, _ in walk(root, skip_state=False):
                if TEMP_MARK in rel.rsplit("/", 1)[-1]:
                    errs.append(f"temporary file left: {rel!r}")
        return errs

    def check_rolled_back(self) -> list:
        errs = self.check_common()
        d = diff_snap(G["snap"], self.snap())
        if d:
            errs.append("not identical after rollback: " + "; ".join(d))
        return errs

    def check_completed(self, changed: dict = None) -> list:
        """After a completed run. changed: source rel -> new digest (None: deleted) for mutated files."""
        changed = changed or {}
        errs = self.check_common()
        for log in self.logs():
            if not log.endswith(".rollback.jsonl"):
                try:
                    last = read_log(log)[0][-1]
                except MigrateError:
                    continue
                if last.get("type") != "close":
                    errs.append(f"run log not closed: {os.path.basename(log)}")
        try:
            text = open(self.yaml, encoding="utf-8").read()
            order = comfy.search_folders([(self.yaml, text)], self.models, env=self.env)
        except Exception as exc:
            return errs + [f"YAML unreadable after run: {exc}"]
        tgt = os.path.realpath(self.target) + "/"
        bad = []
        for rel, cat, name, digest in G["names"]:
            if rel in changed:
                digest = changed[rel]
                if digest is None:
                    continue
            winner = next((os.path.join(f, name) for f in order.get(cat, [])
                           if os.path.isfile(os.path.join(f, name))), None)
            if winner is None:
                bad.append(f"{rel!r} not found")
            elif not os.path.realpath(winner).startswith(tgt):
                bad.append(f"{rel!r} resolves outside the target ({winner})")
            elif rel != CONFLICT_REL and digest_file(winner) != digest:
                bad.append(f"{rel!r} resolves to other content")
        if bad:
            errs.append(f"{len(bad)} names do not resolve in the target: " + "; ".join(bad[:3]))
        for rel, (to, digest) in G.get("links", {}).items():
            link = os.path.join(self.models, rel)
            digest = changed.get(to, digest)
            if digest is None:
                continue        # its file was deleted before the run
            if not os.path.isfile(link):
                errs.append(f"in-tree symlink {rel!r} dangles after the run")
            elif digest_file(link) != digest:
                errs.append(f"in-tree symlink {rel!r} loads other bytes after the run")
        inodes = {}
        for rel, path, st in walk(self.target, skip_state=True):
            if stat.S_ISREG(st.st_mode):
                inodes.setdefault(digest_file(path), set()).add((st.st_dev, st.st_ino))
        dup = [d for d, s in inodes.items() if len(s) > 1]
        if dup:
            errs.append(f"{len(dup)} contents stored more than once in the target, e.g. {G['where'].get(dup[0], dup[0])!r}")
        return errs


def trial_names():
    """(source rel, category, name, digest) of every file the pristine pod migrates."""
    res = scan_tree(os.path.join(G["pristine"], "ComfyUI", "models"))
    out = []
    for r in res.records:
        if r.status is Status.MIGRATE:
            out.append((r.rel, r.category, r.name, digest_file(r.path)))
    return out


def trial_links() -> dict:
    """source rel -> (its file's rel, digest) of each in-tree symlink of the pristine pod that leads to a file (e.g.
    upscale_models/alias.pth -> ../loras/model_001.safetensors): after a run it must still load those
    bytes (issue 20: a kill between its file's removal and its re-pointing left it dangling)."""
    models = os.path.join(G["pristine"], "ComfyUI", "models")
    out = {}
    for rel, path, st in walk(models, skip_state=True):
        if stat.S_ISLNK(st.st_mode) and os.path.isfile(path) and \
                os.path.realpath(path).startswith(os.path.realpath(models) + "/"):
            out[rel] = (os.path.relpath(os.path.realpath(path), os.path.realpath(models)), digest_file(path))
    return out


def fork_cli(argv: list, env: dict, out_path: str, timeout: float, pre=None):
    return fork_wait(fork_start(argv, env, out_path, pre), out_path, timeout)


def fork_start(argv: list, env: dict, out_path: str, pre=None) -> int:
    """Start `comfy-migrate ARGV` in a forked child (stdout and stderr to out_path); returns its pid."""
    import migrate.cli  # noqa: F401  (imported once per worker, before forking)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:    # the child: becomes `comfy-migrate ARGV` and never returns
        code = 1
        try:
            fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            nul = os.open(os.devnull, os.O_RDONLY)
            os.dup2(nul, 0)
            os.environ.clear()
            os.environ.update(env)
            os.chdir(ROOT)
            sys.argv = ["comfy-migrate", *argv]
            if pre is not None:
                pre()
            migrate.cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    return pid


def fork_wait(pid: int, out_path: str, timeout: float):
    """(exit code, output) of a child from fork_start; SIGKILLed after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -999, f"timed out after {timeout} s"
        time.sleep(0.005)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    try:
        with open(out_path, "rb") as f:
            out = f.read().decode("utf-8", "replace")
        os.unlink(out_path)
    except FileNotFoundError:       # SIGKILLed (fleet, kill at a random time) before it opened it
        out = ""
    return code, out


# --- in-process helpers -------------------------------------------------------------------------------

def in_process_plan(t: Trial):
    from migrate.disk.facts import gather, make_plan
    facts = gather([t.models], t.target, t.yaml, None)
    return make_plan(facts, Policy())


def in_process_run(t: Trial, plan, on_bytes=None):
    from migrate.app.execute import execute_plan
    old = dict(os.environ)
    os.environ.update(HOME=t.home, XDG_CACHE_HOME=t.env["XDG_CACHE_HOME"])
    try:
        return execute_plan(plan, ["torture"], on_bytes)
    finally:
        os.environ.clear()
        os.environ.update(old)


@contextlib.contextmanager
def patched(obj, name, fn):
    old = getattr(obj, name)
    setattr(obj, name, fn(old))
    try:
        yield
    finally:
        setattr(obj, name, old)


def expect_recover_run(t: Trial, errs: list, changed=None, allow=(0,)) -> list:
    code, out = t.run()
    if code not in allow:
        return errs + [f"recovery `run` exit {code}: {out.strip()[-300:]}"]
    return errs + t.check_completed(changed)


def expect_recover_rollback(t: Trial, errs: list) -> list:
    code, out = t.rollback()
    if code == 6 and "no run to roll back" in out:
        # Nothing left to undo: no run log was written yet, or the rollback had already closed.
        t.notes.append("nothing to roll back")
    elif code != 0:
        return errs + [f"recovery `rollback` exit {code}: {out.strip()[-300:]}"]
    return errs + t.check_rolled_back()


# --- trials (each returns a list of failures; empty = passed) -----------------------------------------

def t_crash_run(t: Trial, n: int, recover: str) -> list:
    code, out = t.run(crash_at=n)
    if code not in (-signal.SIGKILL, 0):
        return [f"crashed run exit {code}: {out[-200:]}"]
    return expect_recover_run(t, []) if recover == "run" else expect_recover_rollback(t, [])


def t_crash_rollback(t: Trial, n: int) -> list:
    code, out = t.run()
    if code != 0:
        return [f"clean run exit {code}: {out[-200:]}"]
    code, out = t.rollback(crash_at=n)
    if code not in (-signal.SIGKILL, 0):
        return [f"crashed rollback exit {code}: {out[-200:]}"]
    return expect_recover_rollback(t, [])


def t_sigkill(t: Trial, what: str, frac: float, recover: str) -> list:
    dur = G["dur"][(what, t.cross)]
    if what == "rollback":
        code, out = t.run()
        if code != 0:
            return [f"clean run exit {code}: {out[-200:]}"]
    p = t.popen(what, "--yes")
    time.sleep(frac * dur)
    p.kill()
    p.wait()
    t.notes.append(f"killed={p.returncode == -signal.SIGKILL}")
    if what == "run" and recover == "run":
        return expect_recover_run(t, [])
    return expect_recover_rollback(t, [])


def _refused(what: str, want: int, code: int, out: str, before, after, changed: str = "changed") -> list:
    """Errors of a command that had to be refused: another exit code than `want`, or any change."""
    errs = []
    if code != want:
        errs.append(f"{what}: expected exit {want}, got {code}: {out.strip()[-200:]}")
    d = diff_snap(before, after)
    if d:
        errs.append(f"{changed}: " + "; ".join(d))
    return errs


def t_enospc_preflight(t: Trial) -> list:
    before = t.snap()
    code, out = t.run()
    errs = _refused("preflight", 4, code, out, before, t.snap(), "changed by a refused run")
    if t.logs():
        errs.append("a refused run left a log")
    return errs


def t_enospc_filler(t: Trial) -> list:
    """Real ENOSPC: `comfy-migrate run` into a tmpfs big enough at plan time (the preflight passes);
    at the first copied chunk a filler file takes every free byte (the journal shares the volume)."""
    filler = os.path.join(t.target, "filler.bin")

    def pre():      # runs in the forked CLI child, before main()
        old = fsops.write_all
        state = {"done": False}

        def write_all(fd, data):
            if not state["done"]:
                state["done"] = True
                with open(filler, "wb") as f:
                    with contextlib.suppress(OSError):
                        while True:
                            f.write(b"\0" * (1 << 16))
                            f.flush()
            return old(fd, data)
        fsops.write_all = write_all

    code, out = t.run(pre=pre)
    errs = []
    if not os.path.exists(filler):
        errs.append("no byte was copied: the filler never ran")
    if code not in (1, 4) or "Traceback" in out:
        errs.append(f"disk full mid-run: exit {code}, expected 1 (problems) or 4 (no space) with a message: "
                    f"{out.strip()[-300:]}")
    t.notes.append(f"exit {code}: {out.strip().splitlines()[-1][:150] if out.strip() else ''}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(filler)
    return expect_recover_run(t, errs)


def failing(errno_, k: int, counter: dict, path_ok=lambda p: True, after_bytes=None):
    """Wrap a function so its k-th eligible call (or the write past after_bytes) raises OSError(errno_)."""
    def wrap(old):
        def fn(*a, **kw):
            p = a[0] if a and isinstance(a[0], (str, bytes)) else ""
            if after_bytes is not None:
                counter["bytes"] = counter.get("bytes", 0) + len(memoryview(a[1]))
                if counter["bytes"] > after_bytes and not counter.get("hit"):
                    counter["hit"] = 1
                    raise OSError(errno_, os.strerror(errno_))
                return old(*a, **kw)
            if path_ok(os.fsdecode(p)) if p else True:
                counter["n"] = counter.get("n", 0) + 1
                if counter["n"] == k:
                    counter["hit"] = 1
                    raise OSError(errno_, os.strerror(errno_), p)
            return old(*a, **kw)
        return fn
    return wrap


def not_lock(p: str) -> bool:
    return "/.comfy-migrate/lock" not in p


def t_inject(t: Trial, target: str, err: int, k: int, after_bytes=None) -> list:
    plan = in_process_plan(t)
    counter: dict = {}
    obj, name = {"os.link": (os, "link"), "os.rename": (os, "rename"), "os.unlink": (os, "unlink"),
                 "rename_noreplace": (fsops, "rename_noreplace"), "write_all": (fsops, "write_all")}[target]
    try:
        with patched(obj, name, failing(err, k, counter, not_lock, after_bytes)):
            rep = in_process_run(t, plan)
        t.notes.append(f"hit={bool(counter.get('hit'))} problems={len(rep.problems)}")
        if counter.get("hit") and rep.ok and target not in ("os.unlink",):
            t.notes.append("fault absorbed")
    except MigrateError as exc:
        t.notes.append(f"stopped: {type(exc).__name__}")
    except OSError as exc:
        t.notes.append(f"raised {exc!r}")      # the run stopped; its log is left open for `run` to continue
    errs = t.check_common()
    return expect_recover_run(t, errs)


MUTATIONS = ("modify", "truncate", "grow", "replace", "delete")


def t_changed(t: Trial, how: str, rng: random.Random) -> list:
    plan = in_process_plan(t)
    acts = [a for a in plan.actions if a.method is not Method.NONE and a.kind.value in ("move",)]
    a = rng.choice(acts)
    path = a.source
    data = open(path, "rb").read()
    new = None
    # Each change leaves a valid model (a broken one would be held back by the audit, by design).
    if how == "modify":
        new = data[:-1] + bytes([data[-1] ^ 0xFF])          # a tensor byte, same size
    elif how == "truncate":
        new = blob(rng, len(data) // 2)                     # shorter, same inode
    elif how == "grow":
        new = blob(rng, len(data) + 10)                     # longer, same inode
    elif how == "replace":
        new = blob(rng, len(data))
    if how == "replace":
        tmp = path + ".new"
        with open(tmp, "wb") as f:
            f.write(new)
        os.rename(tmp, path)
    elif how == "delete":
        os.unlink(path)
    else:
        with open(path, "r+b") as f:
            f.write(new)
            f.truncate(len(new))
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    newd = xxhash.xxh3_128(new).hexdigest() if new is not None else None
    if sum(1 for v in G["snap"].values() if isinstance(v, tuple) and v[0] == "file" and v[1] == a.digest) == 1:
        t.expect_digests.discard(a.digest)      # its only copy was changed on purpose
    if newd:
        t.expect_digests.add(newd)
    try:
        rep = in_process_run(t, plan)
    except MigrateError as exc:
        return [f"run stopped: {exc}"]
    errs = []
    if not any(p.path == path for p in rep.problems):
        errs.append(f"the changed file {a.rel!r} was not reported ({len(rep.problems)} problems)")
    if how != "delete":
        if not os.path.isfile(path) or digest_file(path) != newd:
            errs.append(f"the changed file {a.rel!r} was not kept in place")
    errs += t.check_common()
    return expect_recover_run(t, errs, changed={a.rel: newd})


def t_lock_race(t: Trial) -> list:
    p1, p2 = t.popen("run", "--yes"), t.popen("run", "--yes")
    c1, c2 = (ran(p.wait(120), open(os.path.join(t.dir, f"popen{i}.err"), errors="replace").read())
              for i, p in ((t.n_popen - 1, p1), (t.n_popen, p2)))
    t.notes.append(f"codes {c1},{c2}")
    errs = []
    if not ({c1, c2} <= {0, 1, 3, 5}) or 0 not in (c1, c2):
        errs.append(f"racing runs exited {c1} and {c2}")
    return expect_recover_run(t, errs)


def t_lock_stale(t: Trial) -> list:
    from migrate.disk.lock import boot_id, pid_namespace
    dead = subprocess.Popen(["true"])
    dead.wait()
    sd = os.path.join(t.target, STATE)
    os.makedirs(sd, exist_ok=True)
    with open(os.path.join(sd, "lock"), "w") as f:
        json.dump({"host": socket.gethostname(), "boot_id": boot_id(), "pidns": pid_namespace(), "pid": dead.pid,
                   "started": "2020-01-01T00:00:00Z", "purpose": "comfy-migrate run"}, f)
    code, out = t.run()
    errs = []
    if code != 0:
        errs.append(f"run with a stale lock exit {code}: {out.strip()[-200:]}")
    elif "stale" not in out:
        errs.append("the stale lock take-over was not reported")
    errs += t.check_completed()
    if os.path.exists(os.path.join(sd, "lock")):
        errs.append("lock left behind")
    return errs


def t_trash(t: Trial) -> list:
    code, out = t.run()
    if code != 0:
        return [f"clean run exit {code}: {out[-200:]}"]
    qdir = os.path.join(t.models, STATE, "quarantine")
    before = sorted(r for r, _, st in walk(qdir, False) if stat.S_ISREG(st.st_mode))
    if not before:
        return ["nothing was quarantined: the trial does not test purge"]
    code, out = t.cli("purge", "--yes", env={"HOME": os.path.join(t.dir, "no-such-home")})
    errs = []
    after = sorted(r for r, _, st in walk(qdir, False) if stat.S_ISREG(st.st_mode))
    if code != 1:
        errs.append(f"purge without a trash exit {code} (expected 1)")
    if after != before:
        errs.append(f"purge without a trash removed {len(set(before) - set(after))} quarantined files")
    if "kept" not in out:
        errs.append("purge did not report the files it kept")
    errs += t.check_common()
    return expect_recover_rollback(t, errs)


BOMB = "a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n" + "".join(
    f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
HOSTILE_YAML = {
    "yaml-bomb": BOMB + "comfy:\n  checkpoints: *i\n",
    "yaml-python-tag": "evil: !!python/object/apply:os.system [\"touch /tmp/pwned-by-yaml\"]\n",
    "yaml-list-value": "mine:\n  base_path: /opt\n  loras:\n    - a\n    - b\n",
}


def t_hostile_yaml(t: Trial, which: str) -> list:
    with open(t.yaml, "w") as f:
        f.write(HOSTILE_YAML[which])
    before = t.snap()
    code, out = t.run(timeout=60)
    errs = _refused("hostile YAML", 3, code, out, before, t.snap())
    if t.logs():
        errs.append("a run log was written")
    return errs


def _rewrite(records: list) -> bytes:
    from migrate.disk.journal import _canonical, _sum
    prev, out = "", b""
    for i, r in enumerate(records, 1):
        r = {k: v for k, v in r.items() if k != "sum"}
        r.update(seq=i, prev=prev)
        r["sum"] = _sum(r)
        prev = r["sum"]
        out += _canonical(r) + b"\n"
    return out


def t_hostile_log(t: Trial, which: str, rng: random.Random) -> list:
    code, out = t.run()
    if code != 0:
        return [f"clean run exit {code}: {out[-200:]}"]
    log = [p for p in t.logs() if not p.endswith(".rollback.jsonl")][0]
    raw = open(log, "rb").read()
    lines = raw.split(b"\n")[:-1]
    mid = rng.randrange(2, len(lines) - 1)
    if which == "log-edited":
        rec = json.loads(lines[mid])
        for key in ("size", "dst", "path", "op", "type"):     # a semantic edit, the checksum left as it was
            if key in rec:
                rec[key] = rec[key] + 1 if isinstance(rec[key], int) else rec[key] + "x"
                break
        lines[mid] = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()
        data = b"\n".join(lines) + b"\n"
    elif which == "log-line-removed":
        data = b"\n".join(lines[:mid] + lines[mid + 1:]) + b"\n"
    elif which == "log-reordered":
        lines[mid], lines[mid + 1] = lines[mid + 1], lines[mid]
        data = b"\n".join(lines) + b"\n"
    else:   # paths outside the roots, with every checksum recomputed (only the path check can catch it)
        records = read_log(log)[0]
        outside = os.path.join(t.dir, "outside")
        os.makedirs(outside)
        with open(os.path.join(outside, "victim.safetensors"), "wb") as f:
            f.write(b"do not touch")
        for r in records:
            if r.get("type") == "begin" and r.get("dst"):
                r["dst"] = os.path.join(outside, "victim.safetensors")
                break
        data = _rewrite(records)
    with open(log, "wb") as f:
        f.write(data)
    before = t.snap()
    code, out = t.rollback()
    errs = _refused(which, 6, code, out, before, t.snap())
    if any(p.endswith(".rollback.jsonl") for p in t.logs()):
        errs.append("a rollback log was written")
    if which == "log-outside" and open(os.path.join(t.dir, "outside", "victim.safetensors"), "rb").read() != b"do not touch":
        errs.append("a file outside the roots was touched")
    return errs


# --- fleet: several pods, one store --------------------------------------------------------------------

FLEET_FOLDERS = ("checkpoints", "loras", "vae", "controlnet", "embeddings", "upscale_models", "text_encoders")


def set_host(name: str) -> None:
    """In a forked CLI child: a UTS namespace of its own with this host name (another pod)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x04000000) != 0:      # CLONE_NEWUTS
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUTS)")
    socket.sethostname(name)


def fleet_child(host: str) -> None:
    """In a pod's forked CLI child: its host name, and the lock's lease on a short clock (3 s, a
    heartbeat every 0.2 s) so a SIGKILLed pod's lock, which other hosts cannot see die, is taken
    over in seconds rather than the real ten minutes."""
    from migrate.disk import lock
    lock.LEASE_SECONDS, lock.HEARTBEAT_SECONDS = 3, 0.2
    if G["uts"]:
        set_host(host)


def can_set_host() -> bool:
    pid = os.fork()
    if pid == 0:
        try:
            set_host("probe")
            os._exit(0)
        except BaseException:
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0


class Fleet:
    """2-4 pods (own ComfyUI, YAML, HOME, digest cache, host name) with overlapping models and one
    store: the same file at the same path in every pod, the same content under other names, content
    shared by some pods, a name with other content in another pod (a conflict), files only one has."""

    def __init__(self, name: str, rng: random.Random, n: int):
        self.dir = os.path.join(G["tmp"], "trials", name)
        self.target = os.path.join(self.dir, "volume", "models")
        os.makedirs(self.target)
        pool = [blob(rng, rng.randint(800, 24000)) for _ in range(10)]
        big = blob(rng, 1 << 20)
        self.pods = []
        for i in range(n):
            files = {"checkpoints/common.safetensors": pool[0], "vae/big.safetensors": big}
            for j in range(rng.randint(4, 9)):
                data = pool[rng.randrange(1, len(pool))] if rng.random() < 0.6 else blob(rng, rng.randint(800, 9000))
                folder = rng.choice(FLEET_FOLDERS)
                sub = rng.choice(["", "", "sub/"])
                files[f"{folder}/{sub}m{rng.randrange(12)}.safetensors"] = data
            if rng.random() < 0.3:
                files["loras/clash.safetensors"] = blob(rng, 3000)     # other bytes under one name
            root = os.path.join(self.dir, f"pod{i}")
            comfyui = os.path.join(root, "ComfyUI")
            for rel, data in files.items():
                path = os.path.join(comfyui, "models", rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
            # An in-tree symlink to one of its models: it must load those bytes after every command.
            to = sorted(files)[rng.randrange(len(files))]
            links = {"upscale_models/alias.pth": files[to]}
            os.makedirs(os.path.join(comfyui, "models", "upscale_models"), exist_ok=True)
            os.symlink(os.path.join("..", to), os.path.join(comfyui, "models", "upscale_models", "alias.pth"))
            with open(os.path.join(comfyui, YAML_NAME), "w") as f:
                f.write(f"# pod {i}\n" + USER_YAML)
            home = os.path.join(root, "home")
            os.makedirs(home)
            env = dict(PATH=os.environ.get("PATH", "/usr/bin:/bin"), LANG="C.UTF-8", HOME=home,
                       XDG_CACHE_HOME=os.path.join(home, ".cache"), XDG_DATA_HOME=os.path.join(home, ".local/share"),
                       COMFY_MIGRATE_CACHE=os.path.join(home, "digests.sqlite"), COMFYUI_DIR=comfyui,
                       COMFY_MIGRATE_TARGET=self.target)
            self.pods.append(dict(i=i, comfy=comfyui, env=env, files=files, links=links, host=f"pod-{i}",
                                  snap=snapshot(comfyui, os.path.join(root, "none"))))
        self.digests = {xxhash.xxh3_128(d).hexdigest() for p in self.pods for d in p["files"].values()}
        self.notes: list = []

    def start(self, pod: dict, *args, crash_at=None) -> tuple:
        env = dict(pod["env"], **({"COMFY_MIGRATE_CRASH_AT": str(crash_at)} if crash_at else {}))
        out = os.path.join(self.dir, f"out{pod['i']}-{time.monotonic_ns()}")
        return fork_start(["-q", *args], env, out, lambda: fleet_child(pod["host"])), out

    def cli(self, pod: dict, *args) -> tuple:
        return fork_wait(*self.start(pod, *args), 120)

    # -- invariants --
    def store_files(self) -> dict:
        # A pod SIGKILLed while probing hardlinks leaves its empty scratch files (.comfy-migrate-probe-<pid>-a/b)
        # in the store root: noted, not counted (the catalogue skips them too).
        out = {}
        for rel, path, st in walk(self.target, skip_state=True):
            if stat.S_ISREG(st.st_mode):
                if os.path.basename(rel).startswith(".comfy-migrate-probe-") and st.st_size == 0:
                    if "probe files left by a killed pod" not in self.notes:
                        self.notes.append("probe files left by a killed pod")
                    continue
                out[rel] = (path, st)
        return out

    def check_pod(self, pod: dict) -> list:
        """Every file of the pod: its bytes at its place, or in the store where the pod's YAML finds it."""
        try:
            yaml = os.path.join(pod["comfy"], YAML_NAME)
            order = comfy.search_folders([(yaml, open(yaml, encoding="utf-8").read())],
                                         os.path.join(pod["comfy"], "models"), env=pod["env"])
        except Exception as exc:
            return [f"pod{pod['i']}: YAML unreadable: {exc}"]
        bad = []
        tgt = os.path.realpath(self.target) + "/"
        for rel, data in pod["files"].items():
            here = os.path.join(pod["comfy"], "models", rel)
            if os.path.isfile(here) and open(here, "rb").read() == data:
                continue
            folder, name = rel.split("/", 1)
            cat = comfy.category_of(folder)[0]
            found = next((os.path.join(f, name) for f in order.get(cat, []) if os.path.isfile(os.path.join(f, name))), None)
            if found is None or not os.path.realpath(found).startswith(tgt) or open(found, "rb").read() != data:
                bad.append(f"{rel} ({'not found' if found is None else found})")
        for rel, data in pod["links"].items():
            link = os.path.join(pod["comfy"], "models", rel)
            if not os.path.isfile(link) or open(link, "rb").read() != data:
                bad.append(f"in-tree symlink {rel} " + ("dangles" if not os.path.isfile(link) else "loads other bytes"))
        return [f"pod{pod['i']}: {len(bad)} files neither in place nor found in the store: {'; '.join(bad[:3])}"] if bad else []

    def check_store(self, catalogue: bool) -> list:
        from migrate.disk import catalogue as store_catalogue
        from migrate.disk.runlog import check_log
        errs = []
        have = set()
        for _, path, st in walk(self.dir, skip_state=False):
            if stat.S_ISREG(st.st_mode):
                have.add(digest_file(path))
        if self.digests - have:
            errs.append(f"content lost: {len(self.digests - have)} digests")
        files = self.store_files()
        digests = {rel: digest_file(path) for rel, (path, _) in files.items()}
        by_inode = {(st.st_dev, st.st_ino): digests[rel] for rel, (_, st) in files.items()}
        if len(set(by_inode.values())) != len(by_inode):
            errs.append("the same content is stored twice (distinct inodes)")
        for rel in files:
            if TEMP_MARK in rel:
                errs.append(f"temporary left in the store: {rel}")
        runs = os.path.join(self.target, STATE, "runs")
        open_runs = 0
        for n in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
            try:
                records = read_log(os.path.join(runs, n))[0]       # chain and checksums
                open_runs += records[-1].get("type") != "close" and not n.endswith(".rollback.jsonl")
                if not n.endswith(".rollback.jsonl"):
                    check_log(records, os.path.join(runs, n))     # and a run's paths inside its folders
            except MigrateError as exc:
                errs.append(f"log {n} invalid: {exc}")
        if catalogue:
            cat, warning = store_catalogue.load(self.target)
            got = {rel: (e.digest, e.ino, e.size, e.mtime_ns) for rel, e in cat.items()}
            want = {rel: (digests[rel], st.st_ino, st.st_size, st.st_mtime_ns) for rel, (_, st) in files.items()}
            missing = set(want) - set(got)
            if open_runs and missing and not warning and all(got[r] == want[r] for r in got):
                # An interrupted run's placements are unknown to the catalogue until that run is
                # continued (or the files hashed): a cache that lacks entries, not a wrong one.
                self.notes.append(f"catalogue lacks {len(missing)} while a run is interrupted")
            elif warning or got != want:
                wrong = sorted(r for r in got if r in want and got[r] != want[r])
                errs.append(f"catalogue differs from the store ({warning}): {len(wrong)} wrong e.g. {wrong[:2]}, "
                            f"{len(set(got) - set(want))} extra e.g. {sorted(set(got) - set(want))[:2]}, "
                            f"{len(set(want) - set(got))} missing e.g. {sorted(set(want) - set(got))[:2]}")
        return errs

    def live_runs(self, pod: dict) -> list:
        """The pod's runs not rolled back, newest first."""
        runs = os.path.join(self.target, STATE, "runs")
        out = []
        for n in sorted(os.listdir(runs), reverse=True) if os.path.isdir(runs) else []:
            if n.endswith(".rollback.jsonl") or not n.endswith(".jsonl"):
                continue
            head = read_log(os.path.join(runs, n))[0][0]
            rb = os.path.join(runs, n[:-6] + ".rollback.jsonl")
            done = os.path.exists(rb) and read_log(rb)[0][-1].get("type") == "close"
            if not done and os.path.join(pod["comfy"], "models") in head.get("sources", []):
                out.append(head["run"])
        return out


def shared_folder_only(code: int, text: str) -> bool:
    """A rollback on a shared store that skipped only removing store folders other pods' files
    occupy (exit 1, 'folder is not empty'): nothing of this pod is left undone."""
    warns = [line for line in text.splitlines() if line.startswith("warning:")]
    return code == 1 and bool(warns) and all("folder is not empty" in w for w in warns)


def t_fleet(name: str, rng: random.Random, n: int, kill: str) -> tuple:
    """Pods run at once into one store, one SIGKILLed; then runs/rollbacks of random pods in random
    order (each checked); then every pod is rolled back: each as it was, the store without a model."""
    fl = Fleet(name, rng, n)
    victim = rng.randrange(n)
    fl.notes.append(f"victim pod{victim}")
    started = []
    for pod in fl.pods:
        crash = rng.randint(1, 25) if pod["i"] == victim and kill == "step" else None
        started.append(fl.start(pod, "run", "--yes", "--wait", "60", crash_at=crash))
    if kill == "time":
        time.sleep(rng.uniform(0.0, 0.6))
        with contextlib.suppress(ProcessLookupError):
            os.kill(started[victim][0], signal.SIGKILL)
    errs = []
    for pod, (pid, out) in zip(fl.pods, started):
        code, text = fork_wait(pid, out, 120)
        code = ran(code, text)
        if pod["i"] == victim:
            fl.notes.append(f"victim exit {code}")
            if code not in (0, -signal.SIGKILL):
                errs.append(f"pod{pod['i']} (victim) exit {code}: {text.strip()[-200:]}")
        elif code != 0:
            errs.append(f"pod{pod['i']} run exit {code}: {text.strip()[-200:]}")
        else:
            errs += fl.check_pod(pod)
    errs += fl.check_store(catalogue=False)
    if errs:
        return errs, fl
    # Re-runs and rollbacks of random pods in random order; the victim is recovered somewhere.
    ops = [(p, rng.choice(["run", "rollback"])) for p in rng.sample(fl.pods, n)]
    ops += [(rng.choice(fl.pods), rng.choice(["run", "rollback"])) for _ in range(rng.randint(0, 2))]
    for pod, op in ops:
        if op == "run":
            code, text = fl.cli(pod, "run", "--yes", "--wait", "60")
            code = ran(code, text)
        elif G["uts"]:
            code, text = fl.cli(pod, "rollback", "--yes", "--wait", "60")       # this host's newest
        else:
            live = fl.live_runs(pod)
            code, text = fl.cli(pod, "rollback", *live[:1], "--yes", "--wait", "60")
        fl.notes.append(f"pod{pod['i']} {op} {code}")
        if code == 6 and op == "rollback" and ("rolled back already" in text or "no run" in text):
            continue
        if op == "rollback" and shared_folder_only(code, text):
            fl.notes.append("kept a shared folder")
        elif code != 0:
            return errs + [f"pod{pod['i']} {op} exit {code}: {text.strip()[-300:]}"], fl
        errs += fl.check_pod(pod) + fl.check_store(catalogue=True)
        if errs:
            return [f"after pod{pod['i']} {op}: {e}" for e in errs], fl
    # Roll back every pod (random order, each run newest first).
    for pod in rng.sample(fl.pods, n):
        for run in fl.live_runs(pod):
            code, text = fl.cli(pod, "rollback", run, "--yes", "--wait", "60")
            if shared_folder_only(code, text):
                fl.notes.append("kept a shared folder")
            elif code != 0:
                errs.append(f"final rollback of pod{pod['i']} run {run}: exit {code}: {text.strip()[-300:]}")
                errs += fl.check_pod(pod)
        d = diff_snap(pod["snap"], snapshot(pod["comfy"], os.path.join(fl.dir, "none")))
        if d:
            errs.append(f"pod{pod['i']} not as it was after rolling back all its runs: " + "; ".join(d))
    left = sorted(fl.store_files())
    if left:
        errs.append(f"the store still holds {len(left)} files after every pod rolled back, e.g. {left[:3]}")
    return errs + fl.check_store(catalogue=True), fl


# --- audit: broken files mixed in a pod ----------------------------------------------------------------

def broken_file(rng: random.Random, how: str) -> bytes:
    good = blob(rng, rng.randint(2000, 9000))
    if how == "truncated":
        return good[:rng.randint(len(good) // 2, len(good) - 1)]
    if how == "trailing":
        return good + rng.randbytes(rng.randint(1, 300))
    if how == "lfs":
        return (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + rng.randbytes(32).hex().encode()
                + b"\nsize " + str(rng.randint(1 << 20, 1 << 33)).encode() + b"\n")
    return b"<!DOCTYPE html>\n<html><head><title>Sign in - Hugging Face</title></head><body>" + \
        rng.randbytes(200).hex().encode() + b"</body></html>\n"


def t_audit(t: Trial, rng: random.Random, recover: str) -> list:
    """Broken files among the models: a run leaves each untouched at its place and out of the store."""
    planted = {}
    for k in range(rng.randint(1, 5)):
        how = rng.choice(["truncated", "trailing", "lfs", "html"])
        folder = rng.choice(["checkpoints", "loras", "vae", "controlnet", "unet", "my_custom_node/weights"])
        ext = rng.choice([".safetensors", ".safetensors", ".ckpt", ".pt"]) if how in ("lfs", "html") else ".safetensors"
        path = os.path.join(t.models, folder, f"broken_{how}_{k}{ext}")
        with open(path, "wb") as f:
            f.write(broken_file(rng, how))
        st = os.stat(path)
        planted[path] = (open(path, "rb").read(), st.st_ino, st.st_mtime_ns, how)
    t.notes.append(",".join(sorted({v[3] for v in planted.values()})))
    before = t.snap()
    code, out = t.run()
    errs = []
    if code not in (0, 1) or "Traceback" in out:
        errs.append(f"run exit {code}: {out.strip()[-300:]}")
    stored = {digest_file(p) for _, p, st in walk(t.target, skip_state=False) if stat.S_ISREG(st.st_mode)}
    for path, (data, ino, mtime, how) in planted.items():
        rel = os.path.relpath(path, t.models)
        try:
            st = os.stat(path)
            same = open(path, "rb").read() == data and (st.st_ino, st.st_mtime_ns) == (ino, mtime)
        except OSError:
            same = False
        if not same:
            errs.append(f"broken file ({how}) {rel!r} not left untouched at its place")
        if xxhash.xxh3_128(data).hexdigest() in stored:
            errs.append(f"broken file ({how}) {rel!r} reached the store")
    errs += t.check_completed()
    if recover == "run":
        code, out = t.run()
        if code not in (0, 1):
            errs.append(f"second run exit {code}: {out.strip()[-200:]}")
    code, out = t.rollback()
    if code != 0:
        return errs + [f"rollback exit {code}: {out.strip()[-300:]}"]
    d = diff_snap(before, t.snap())
    return errs + (["not identical after rollback: " + "; ".join(d)] if d else [])


# --- obstacle: something in the way of run, placed after the plan (issue 15) -----------------------------

OBSTACLES = ("file", "folder", "readonly-source", "readonly-store", "symlink", "long")


@contextlib.contextmanager
def read_only(path: str):
    """`path` as a read-only bind mount of itself (EROFS even for root; we are in our own mount
    namespace), undone afterwards."""
    subprocess.run(["mount", "--bind", path, path], check=True, stderr=subprocess.DEVNULL)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", path], check=True, stderr=subprocess.DEVNULL)
        yield path
    finally:
        subprocess.run(["umount", "-l", path], stderr=subprocess.DEVNULL)


def place_obstacle(t: Trial, plan, how: str, rng: random.Random, stack: contextlib.ExitStack) -> tuple:
    """Put one obstacle in the way of `plan`; returns (a note, extra folders to snapshot, run args)."""
    from migrate.core.preflight import needed_folders, source_folders
    moves = [a for a in plan.actions if a.dst and a.method is not Method.NONE]
    if how == "file":           # a file where run needs a folder
        folder = rng.choice([d for d in needed_folders(plan) if d != t.target])
        parts = os.path.relpath(folder, t.target).split("/")
        cut = os.path.join(t.target, *parts[:rng.randint(1, len(parts))])
        if os.path.isdir(cut):
            shutil.move(cut, os.path.join(t.dir, "moved-aside"))
        os.makedirs(os.path.dirname(cut), exist_ok=True)
        with open(cut, "wb") as f:
            f.write(b"in the way")
        return f"file at {os.path.relpath(cut, t.target)}", [os.path.join(t.dir, "moved-aside")], ()
    if how == "folder":         # a folder holding a destination's name
        a = rng.choice(moves)
        os.makedirs(a.dst)
        return f"folder at {os.path.relpath(a.dst, t.target)}", [], ()
    if how == "readonly-source":
        folder = rng.choice(source_folders(plan))
        stack.enter_context(read_only(folder))
        return f"read-only {os.path.relpath(folder, t.models)}", [], ()
    if how == "readonly-store":
        folder = rng.choice([d for d in needed_folders(plan) if os.path.isdir(d)] or [t.target])
        stack.enter_context(read_only(folder))
        return f"read-only store {os.path.relpath(folder, t.target)}", [], ()
    if how == "symlink":        # a store folder that is a symlink to a folder elsewhere
        folder = rng.choice([d for d in needed_folders(plan) if d != t.target])
        top = os.path.join(t.target, os.path.relpath(folder, t.target).split("/")[0])
        big = os.path.join(t.dir, "big", os.path.basename(top))
        os.makedirs(os.path.dirname(big))
        if os.path.isdir(top):
            shutil.move(top, big)
        else:
            os.makedirs(big)
        os.symlink(big, top)
        return f"symlinked {os.path.basename(top)}", [os.path.dirname(big)], ()
    name = "x" * rng.randint(230, 243) + ".safetensors"     # long: a conflict under a long name
    for root, seed in ((t.models, 1), (t.target, 2)):
        path = os.path.join(root, "loras", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(blob(random.Random(seed), 900))
    return f"long name of {len(name)} bytes", [], ("--on-conflict", "rename")


def t_obstacle(t: Trial, rng: random.Random, how: str, when: str) -> list:
    """An obstacle placed between plan and run. `when`: cli (the real `run`, which plans again under
    the lock: its preflight must refuse with exit 3 and change nothing, or the run must go through)
    or stale (the plan made before the obstacle is executed as it is: run meets it mid-way). Either
    way `rollback` (and `rollback --dry-run`) must exit 0 and give the pod back exactly."""
    errs = []
    with contextlib.ExitStack() as stack:
        plan = in_process_plan(t)
        note, extra, args = place_obstacle(t, plan, how, rng, stack)
        t.notes.append(note)
        snap = lambda: (t.snap(), [snapshot(d, d) for d in extra if os.path.isdir(d)])   # noqa: E731
        before = snap()
        if when == "cli":
            code, out = t.cli("run", "--yes", *args)
            code = ran(code, out)
            if code == 3:
                t.notes.append("refused")
                if t.logs():
                    errs.append("run refused (exit 3) but wrote a log")
                if snap() != before:
                    errs.append("run refused (exit 3) but changed the pod: " + "; ".join(diff_snap(before[0], snap()[0])))
                return errs
            if code not in (0, 1) or "Traceback" in out:
                return [f"run exit {code}: {out.strip()[-300:]}"]
        else:
            try:
                rep = in_process_run(t, plan)
                t.notes.append(f"{len(rep.problems)} problems")
            except MigrateError as exc:
                t.notes.append(f"refused: {exc}")
        code, out = t.cli("rollback", "--dry-run")
        if code != 0:
            errs.append(f"rollback --dry-run exit {code}: {out.strip()[-300:]}")
        code, out = t.rollback()
        if code != 0:
            return errs + [f"rollback exit {code}: {out.strip()[-300:]}"]
        after = snap()
        if after != before:
            d = diff_snap(before[0], after[0]) or ["a folder outside the pod differs"]
            errs.append("not identical after rollback: " + "; ".join(d))
        for root in {t.dir, os.path.dirname(t.target)}:
            for rel, _, _ in walk(root, skip_state=False):
                if TEMP_MARK in rel.rsplit("/", 1)[-1]:
                    errs.append(f"temporary file left: {rel!r}")
    return errs


# --- stale: facts that no longer hold (issue 12) -------------------------------------------------------

def same_size_model(rng: random.Random, old: bytes) -> bytes:
    """Another valid model of exactly old's size: its header, other tensor bytes."""
    n = int.from_bytes(old[:8], "little") + 8
    if not 8 < n < len(old):        # not a safetensors file (a .pt, .bin, ...): keep its first bytes (magic)
        n = min(2, len(old))
    return old[:n] + (rng.randbytes(len(old) - n) if hasattr(rng, "randbytes")
                      else bytes(rng.getrandbits(8) for _ in range(len(old) - n)))


def stale_victims(rng: random.Random, k: int) -> list:
    """k model names, mostly ones whose content is elsewhere too (a duplicate in the pod, or the
    store's copy): those are the files a stale digest gets quarantined as "already there"."""
    names = [rel for rel, _, _, _ in G["names"] if rel != CONFLICT_REL]
    count: dict = {}
    for _, _, _, d in G["names"]:
        count[d] = count.get(d, 0) + 1
    twins = [rel for rel, _, _, d in G["names"] if count[d] > 1 or d in G["target_digests"]]
    picked = rng.sample(twins, min(len(twins), max(1, k - 1)))
    rest = [r for r in names if r not in picked]
    return picked + rng.sample(rest, k - len(picked))


def stale_change(t: Trial, kind: str, rng: random.Random):
    """The change a trial makes, drawn now (the same bytes wherever it is applied) and returned as a
    function of no arguments that makes it and returns notes."""
    if kind == "stale-swap":
        a, b = stale_victims(rng, 2)
        pairs = [(a, b)]

        def change() -> list:
            for x, y in pairs:
                px, py = os.path.join(t.models, x), os.path.join(t.models, y)
                tmp = px + ".swap"
                os.rename(px, tmp)
                os.rename(py, px)
                os.rename(tmp, py)
            return [f"swapped {a} and {b}"]
        return change
    victims = stale_victims(rng, rng.randint(1, 4))
    new = {}
    for rel in victims:
        with open(os.path.join(t.models, rel), "rb") as f:
            new[rel] = same_size_model(rng, f.read())

    def times(path: str) -> tuple:
        st = os.stat(path)
        return st.st_atime_ns, st.st_mtime_ns

    if kind == "stale-rewrite":
        def change() -> list:
            for rel, data in new.items():
                path = os.path.join(t.models, rel)
                keep = times(path)
                with open(path, "r+b") as f:          # what `cp -p` does to an existing name
                    f.write(data)
                    f.truncate(len(data))
                os.utime(path, ns=keep)
            return [f"rewrote {len(new)} in place"]
        return change

    def change() -> list:     # stale-reuse: delete, recreate in the order of the old inode numbers
        paths = {rel: os.path.join(t.models, rel) for rel in new}
        old = {rel: os.stat(p).st_ino for rel, p in paths.items()}
        kept = {rel: times(p) for rel, p in paths.items()}
        order = sorted(old, key=old.__getitem__)
        for attempt in (order, order[::-1]):
            for rel in attempt:
                os.unlink(paths[rel])
            for rel in attempt:                 # ext4 hands out the lowest free inode of the group
                with open(paths[rel], "wb") as f:
                    f.write(new[rel])
                os.utime(paths[rel], ns=kept[rel])
            reused = sum(os.stat(paths[rel]).st_ino == old[rel] for rel in new)
            if reused == len(new):
                break
        # hit=False: the fault never fired (counted as such in the summary)
        return [f"recreated {len(new)}, {reused} on their old inode", f"hit={reused > 0}"]
    return change


def t_stale(t: Trial, kind: str, rng: random.Random, warm: str, when: str, purge: bool) -> list:
    """Warm the cache (plan or scan), make a stale fact (after it; or inside `run`, just before it
    takes the lock and plans again, or just before its first step), then run, purge --permanent
    (or not), rollback; check each."""
    import pickle
    change = stale_change(t, kind, rng)
    facts = os.path.join(t.dir, "before-run.pickle")

    def change_and_record() -> None:
        notes = change()
        with open(facts, "wb") as f:
            pickle.dump((notes, t.snap()), f)

    # The pod was copied just now: past the racy window the warm entries are trusted later, so the
    # stale one is really offered (a racily clean entry would be read again anyway).
    from migrate.disk.hashing import FINE_SLACK_NS
    time.sleep(FINE_SLACK_NS / 1e9 + 0.05)
    code, out = t.cli(warm)
    if code != 0:
        return [f"{warm} exit {code}: {out.strip()[-300:]}"]
    pre = None
    if when == "after-plan":
        change_and_record()
    else:
        def pre():     # in the forked `run`: the change lands while it would wait for the lock, or
            import migrate.app.migrate    # after its plan under the lock, before its first step
            import migrate.app.execute
            module, name = ((migrate.app.migrate, "take_lock") if when == "lock-wait"
                            else (migrate.app.execute, "execute_plan"))
            real = getattr(module, name)

            def changed_first(*a, **kw):
                change_and_record()
                return real(*a, **kw)
            setattr(module, name, changed_first)
    code, out = t.cli("run", "--yes", pre=pre)
    if not os.path.exists(facts):
        return [f"run exit {code} before the change was made: {out.strip()[-300:]}"]
    with open(facts, "rb") as f:
        notes, before = pickle.load(f)
    t.notes += notes
    t.expect_digests = {v[1] for v in before.values() if isinstance(v, tuple) and v[0] == "file"}
    G["where"].update({v[1]: k[1] for k, v in before.items() if isinstance(v, tuple) and v[0] == "file"})
    errs = []
    if code not in (0, 1) or "Traceback" in out:
        return [f"run exit {code}: {out.strip()[-300:]}"]
    errs += [f"after run: {e}" for e in t.check_common()]
    if purge:
        code, out = t.cli("purge", "--permanent", "--yes")
        if code not in (0, 1) or "Traceback" in out:
            errs.append(f"purge exit {code}: {out.strip()[-300:]}")
        t.notes.append(f"purge {code}")
        errs += [f"after purge: {e}" for e in t.check_common()]
    code, out = t.rollback()
    if code != 0:
        errs.append(f"rollback exit {code}: {out.strip()[-300:]}")
    errs += [f"after rollback: {e}" for e in t.check_common()]
    d = diff_snap(before, t.snap())
    if d:
        errs.append("after rollback not as right before the run: " + "; ".join(d))
    return errs


@contextlib.contextmanager
def ext4(path: str, size: str = "96M"):
    """A fresh ext4 image loop-mounted at path (freed inodes are reused there, unlike on tmpfs)."""
    img = path + ".img"
    os.makedirs(path, exist_ok=True)
    subprocess.run(["truncate", "-s", size, img], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", img], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(["mount", "-o", "loop", img, path], check=True, stderr=subprocess.DEVNULL)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], stderr=subprocess.DEVNULL)
        with contextlib.suppress(OSError):
            os.unlink(img)


# --- mounts --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def tmpfs(path: str, size: str):
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], check=True,
                   stderr=subprocess.DEVNULL)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], stderr=subprocess.DEVNULL)


def can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    p = os.path.join(G["tmp"], "mount-probe")
    try:
        with tmpfs(p, "1M"):
            return os.path.ismount(p)
    except (subprocess.CalledProcessError, OSError):
        return False


def can_mount_ext4() -> bool:
    if not shutil.which("mkfs.ext4"):
        return False
    try:
        with ext4(os.path.join(G["tmp"], "ext4-probe"), "8M") as p:
            return os.path.ismount(p)
    except (subprocess.CalledProcessError, OSError):
        return False


# --- dispatch ------------------------------------------------------------------------------------------

def run_task(task):
    kind, name, params = task
    t_begin = time.monotonic()
    rng = random.Random(f"{G['seed']}/{name}")
    t = None
    try:
        if kind == "fleet":
            errs, fl = t_fleet(name, rng, params["pods"], params["kill"])
            if not G["keep"] or not errs:
                shutil.rmtree(fl.dir, ignore_errors=True)
            notes = fl.notes + [f"{params['pods']} pods"]
            notes.append(f"{time.monotonic() - t_begin:.1f}s")
            return kind, name, params, errs, notes
        with contextlib.ExitStack() as stack:
            sub = params.get("sub")
            if kind == "enospc" and sub in ("preflight", "filler"):
                mnt = stack.enter_context(tmpfs(os.path.join(G["tmp"], "mnt", name),
                                                "1M" if sub == "preflight" else f"{G['copy_mib'] + 2}M"))
                t = Trial(name, target_dir=mnt)
            elif kind.startswith("stale-") and G["ext4"]:
                mnt = stack.enter_context(ext4(os.path.join(G["tmp"], "mnt", name)))
                t = Trial(name, pod_parent=mnt)
            elif kind == "trash" and G["mount"]:
                mnt = stack.enter_context(tmpfs(os.path.join(G["tmp"], "mnt", name), "64M"))
                t = Trial(name, cross=True, pod_parent=mnt)
            else:
                t = Trial(name, cross=params.get("cross", False))
            t.cross = params.get("cross", False)
            if kind == "crash-run-step":
                errs = t_crash_run(t, params["n"], params["recover"])
            elif kind == "crash-rollback-step":
                errs = t_crash_rollback(t, params["n"])
            elif kind == "sigkill-random":
                errs = t_sigkill(t, params["what"], params["frac"], params["recover"])
            elif kind == "enospc":
                if sub == "preflight":
                    errs = t_enospc_preflight(t)
                elif sub == "filler":
                    errs = t_enospc_filler(t)
                else:
                    errs = t_inject(t, "write_all", errno.ENOSPC, 0, after_bytes=params["k"])
            elif kind == "eio/eperm":
                errs = t_inject(t, params["target"], params["errno"], params["k"])
            elif kind == "changed-under":
                errs = t_changed(t, params["how"], rng)
            elif kind == "lock":
                errs = t_lock_race(t) if sub == "race" else t_lock_stale(t)
            elif kind == "trash":
                errs = t_trash(t)
            elif kind == "audit":
                errs = t_audit(t, rng, params["recover"])
            elif kind == "obstacle":
                errs = t_obstacle(t, rng, params["how"], params["when"])
            elif kind.startswith("stale-"):
                errs = t_stale(t, kind, rng, params["warm"], params["when"], params["purge"])
            elif kind == "hostile":
                errs = t_hostile_yaml(t, sub) if sub.startswith("yaml") else t_hostile_log(t, sub, rng)
            else:
                errs = [f"unknown kind {kind}"]
            notes = list(t.notes)
            if not G["keep"] or not errs:
                t.cleanup()
    except Exception:
        errs = ["trial crashed: " + traceback.format_exc(limit=3).strip().replace("\n", " | ")[-500:]]
        notes = []
        if t is not None and not G["keep"]:
            t.cleanup()
    notes.append(f"{time.monotonic() - t_begin:.1f}s")
    return kind, name, params, errs, notes


def measure():
    """A clean run and rollback on twins: record counts and durations (same and cross filesystem)."""
    out = {}
    warm = Trial("twin-warm")
    warm.run(real=True)
    warm.cleanup()
    for cross in (False, True):
        t = Trial(f"twin-{'x' if cross else 's'}", cross=cross)
        t0 = time.monotonic()
        code, msg = t.run(real=True)
        d_run = time.monotonic() - t0
        if code != 0:
            raise SystemExit(f"torture: a clean run fails on the pristine pod (exit {code}): {msg[-500:]}")
        errs = t.check_completed()
        log = [p for p in t.logs() if not p.endswith(".rollback.jsonl")][0]
        n_run = len(read_log(log)[0])
        t0 = time.monotonic()
        code, msg = t.rollback(real=True)
        d_rb = time.monotonic() - t0
        errs += t.check_rolled_back() if code == 0 else [f"clean rollback exit {code}: {msg[-300:]}"]
        n_rb = len(read_log(log[:-6] + ".rollback.jsonl")[0])
        out[cross] = dict(n_run=n_run, n_rb=n_rb, d_run=d_run, d_rb=d_rb, errs=errs)
        t.cleanup()
    return out


def spread(total: int, count: int) -> list:
    """`count` step numbers spread evenly over 1..total (all of them when count >= total)."""
    if count >= total:
        return list(range(1, total + 1))
    return sorted({1 + round(i * (total - 1) / max(1, count - 1)) for i in range(count)})


def make_tasks(m, n: int, rng: random.Random):
    tasks = []

    def add(kind, params):
        tasks.append((kind, f"{kind.replace('/', '-')}-{len(tasks):04d}", params))

    same = m[False]
    # Subprocess trials cost ~3 CLI calls; in-process ones (eio/eperm, changed-under, ENOSPC injection)
    # one. Defaults (n=200): 40 + 16 + 24 + 16 + 14 + 55 + 25 + 11 fixed = 201.
    for s in spread(same["n_run"], max(2, n * 40 // 200)):
        add("crash-run-step", dict(n=s, recover="run"))
    for s in spread(same["n_run"], max(2, n * 16 // 200)):
        add("crash-run-step", dict(n=s, recover="rollback"))
    for s in spread(same["n_rb"], max(2, n * 24 // 200)):
        add("crash-rollback-step", dict(n=s))
    for i in range(max(4, n * 16 // 200)):
        what = "rollback" if i % 4 == 3 else "run"
        add("sigkill-random", dict(what=what, cross=bool(i % 2), frac=rng.uniform(0.05, 1.0),
                                   recover=rng.choice(["run", "rollback"])))
    add("enospc", dict(sub="preflight"))
    add("enospc", dict(sub="filler"))
    for i in range(max(2, n * 12 // 200)):
        add("enospc", dict(sub="inject", cross=True, k=rng.randrange(0, max(1, G["copy_mib"] - 4) << 20)))
    targets = [("write_all", errno.EIO), ("os.link", errno.EPERM), ("os.link", errno.EMLINK),
               ("rename_noreplace", errno.EXDEV), ("rename_noreplace", errno.EPERM), ("os.unlink", errno.EIO),
               ("os.unlink", errno.EPERM), ("os.link", errno.EIO), ("rename_noreplace", errno.EIO),   # renames go through renameat2 (ctypes), not os.rename
               ("write_all", errno.EPERM)]
    for i in range(max(len(targets), n * 55 // 200)):
        tg, e = targets[i % len(targets)]
        cross = tg == "write_all" or (tg.startswith("rename") and i % 2 == 1)
        add("eio/eperm", dict(target=tg, errno=e, k=rng.randint(1, 60 if tg != "write_all" else 12), cross=cross))
    for i in range(max(len(MUTATIONS), n * 25 // 200)):
        add("changed-under", dict(how=MUTATIONS[i % len(MUTATIONS)], cross=bool(i // len(MUTATIONS) % 2)))
    add("lock", dict(sub="race"))
    add("lock", dict(sub="race", cross=True))
    add("lock", dict(sub="stale"))
    add("trash", dict(sub="purge", cross=True))
    for sub in list(HOSTILE_YAML) + ["log-edited", "log-line-removed", "log-reordered", "log-outside"]:
        add("hostile", dict(sub=sub))
    for i in range(max(2, n * 10 // 200)):
        add("fleet", dict(pods=2 + i % 3, kill="time" if i % 2 else "step"))
    for i in range(max(2, n * 8 // 200)):
        add("audit", dict(recover="run" if i % 2 else "rollback"))
    hows = [h for h in OBSTACLES if G["mount"] or not h.startswith("readonly")]
    for i in range(max(2 * len(hows), n * 24 // 200)):
        add("obstacle", dict(how=hows[i % len(hows)], when="cli" if i // len(hows) % 2 == 0 else "stale"))
    for kind in FAMILIES["stale"]:
        for i in range(max(3, n * 8 // 200)):      # 3: each window once
            add(kind, dict(warm=rng.choice(["plan", "scan"]), when=("after-plan", "lock-wait", "execute")[i % 3],
                           purge=i % 4 < 2))
    return tasks


def init_worker(g):
    G.update(g)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=200, help="scale of the trial counts (default 200)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=max(1, min(os.cpu_count() or 2, 4)))
    ap.add_argument("--keep", action="store_true", help="keep failed trials' folders (and the temp root)")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per trial")
    ap.add_argument("--only", default="", help="only these kinds (comma-separated, e.g. fleet,audit)")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)

    if os.geteuid() == 0 and not os.environ.get("CM_TORTURE_NS") and shutil.which("unshare"):
        # Our own mount namespace: test mounts vanish with us even if we are killed.
        if subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                          stderr=subprocess.DEVNULL).returncode == 0:
            os.environ["CM_TORTURE_NS"] = "1"
            argv = [sys.executable, os.path.abspath(__file__), *sys.argv[1:]]
            if args.seed is None:
                argv += ["--seed", str(seed)]
            os.execvp("unshare", ["unshare", "-m", "--propagation", "private", "--", *argv])

    # The pods live on /dev/shm (tmpfs: fsync is free, so hundreds of CLI runs fit in two minutes);
    # the second filesystem is a tmpfs we mount (else a folder on the disk under $TMPDIR).
    tmp = tempfile.mkdtemp(prefix="comfy-migrate-torture.", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    shm = None
    G.update(tmp=tmp, seed=seed, keep=args.keep)
    t_start = time.monotonic()
    mounts = contextlib.ExitStack()
    try:
        os.makedirs(os.path.join(tmp, "trials"))
        G["pristine"] = os.path.join(tmp, "pristine")
        build_pod(G["pristine"])
        G["snap"] = snapshot(os.path.join(G["pristine"], "ComfyUI"), os.path.join(G["pristine"], "models"))
        G["digests"] = {v[1] for v in G["snap"].values() if isinstance(v, tuple) and v[0] == "file"}
        G["where"] = {v[1]: k[1] for k, v in G["snap"].items() if isinstance(v, tuple) and v[0] == "file"}
        G["target_digests"] = {v[1] for k, v in G["snap"].items() if k[0] == "target" and v[0] == "file"}
        G["names"] = trial_names()
        G["links"] = trial_links()
        G["copy_mib"] = sum(v[4] for k, v in G["snap"].items() if k[0] == "comfy" and v[0] == "file") // (1 << 20) + 1
        G["mount"] = can_mount()
        G["ext4"] = G["mount"] and can_mount_ext4()
        G["uts"] = can_set_host()
        if G["mount"]:
            G["other"] = os.path.join(tmp, "other-fs")
            mounts.enter_context(tmpfs(G["other"], "2G"))
        else:
            shm = G["other"] = tempfile.mkdtemp(prefix="comfy-migrate-torture.")
        if os.stat(G["other"]).st_dev == os.stat(tmp).st_dev:
            print("torture: warning: no second filesystem; cross trials run on one", file=sys.stderr)
        m = measure()
        G["dur"] = {("run", False): m[False]["d_run"], ("run", True): m[True]["d_run"],
                    ("rollback", False): m[False]["d_rb"], ("rollback", True): m[True]["d_rb"]}
        files = sum(1 for v in G["snap"].values() if isinstance(v, tuple) and v[0] == "file")
        print(f"torture: seed {seed}; pod of {files} files ({G['copy_mib']} MiB), {len(G['names'])} to migrate; "
              f"clean run {m[False]['n_run']} records ({m[False]['d_run']:.2f} s same fs, "
              f"{m[True]['d_run']:.2f} s to /dev/shm), rollback {m[False]['n_rb']} records; "
              f"{'unshare -m + tmpfs mounts' if G['mount'] else 'no mounts: ENOSPC by injection only'}"
              f"{'' if G['ext4'] else '; no loop-mounted ext4: stale-reuse cannot reuse inodes'}", flush=True)
        rng = random.Random(seed)
        tasks = make_tasks(m, args.trials, rng)
        if not G["mount"]:
            tasks = [t for t in tasks if not (t[0] == "enospc" and t[2].get("sub") in ("preflight", "filler"))]
        if args.only:
            only = {k for w in args.only.split(",") for k in FAMILIES.get(w, (w,))}
            tasks = [t for t in tasks if t[0] in only]
        results = {k: [0, 0, []] for k in KINDS}
        unfired = {k: 0 for k in KINDS}
        twin_errs = m[False]["errs"] + m[True]["errs"]
        results["crash-run-step"][2] += [("twin", e) for e in twin_errs]
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(args.jobs, initializer=init_worker, initargs=(dict(G),)) as pool:
            for kind, name, params, errs, notes in pool.imap_unordered(run_task, tasks):
                r = results[kind]
                r[0 if not errs else 1] += 1
                unfired[kind] += any(n.startswith("hit=False") for n in notes)
                for e in errs:
                    r[2].append((f"{name} {json.dumps(params, default=str)}", e))
                if args.verbose:
                    print(f"  {'ok  ' if not errs else 'FAIL'} {name} {params} {notes} {errs}", flush=True)
        passed = sum(r[0] for r in results.values())
        failed = sum(r[1] for r in results.values()) + (1 if twin_errs else 0)
        for k in KINDS:
            p, f, errs = results[k]
            print(f"{k:20s} {p:4d} passed {f:4d} failed" +
                  (f"  ({unfired[k]} where the injected fault never fired)" if unfired[k] else ""))
            seen = set()
            for where, e in errs:
                key = e.split(":")[0]
                if key in seen and not args.verbose:
                    continue
                seen.add(key)
                print(f"    {where}: {e}")
        print(f"({time.monotonic() - t_start:.0f} s, seed {seed})")
        print(f"{passed} passed, {failed} failed")
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(G.get("other", tmp), ignore_errors=True)
        mounts.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
            if shm:
                shutil.rmtree(shm, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
