"""Never act on a stale fact (issue 12): a cached digest or verdict, or a plan, that no longer
describes the file at hand must never decide what is kept, quarantined or freed.

The loss of issue 12: a pod's model was rewritten in place by another model of the same size with
its mtime kept (`cp -p`, `touch -d`); the digest cache, keyed by (dev, inode, size, mtime), still
held the old digest, so the plan called the new model "already there" (the store held the OLD
content under that name), `run` quarantined it, `purge --permanent` deleted it, and `rollback`
put the store's other model under its name. Rebuilding a pod from a template does the same: freed
inodes are reused by other files of the same size and mtime.

End-to-end scenarios run the real CLI as a subprocess (conftest's `run_cli`, all state in
tmp_path). The property test forks the real CLI (`migrate.cli.main`) from this process, which has
the package imported already: the same code as `comfy-migrate ...` without an interpreter start
per call, and each call still its own process (its own caches, its own exit).

"No content lost" is checked with digests computed here (xxh3-128), independently of the tool,
after every command: a content counts as kept while some regular file under the pod's ComfyUI
folder (its quarantine included) or the store holds exactly those bytes.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import as_model, past_racy_window, run_cli

STATE = ".comfy-migrate"
OLD_NS = 1_600_000_000_123_456_789       # the models' mtime: long ago, as downloaded files have
Files = Dict[str, bytes]                 # name relative to a tree -> bytes


# --- independent facts --------------------------------------------------------------------------------

def digest(data: bytes) -> str:
    return xxhash.xxh3_128(data).hexdigest()


def regular_files(root: Path, skip_state: bool) -> Files:
    """name -> bytes of every regular file under root (not following symlinks); skip_state leaves
    out root/.comfy-migrate (logs, quarantine, catalogue)."""
    found: Files = {}
    if not root.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        if skip_state and Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d != STATE]
        for fn in filenames:
            p = os.path.join(dirpath, fn)
            if stat.S_ISREG(os.lstat(p).st_mode):
                with open(p, "rb") as f:
                    found[os.path.relpath(p, root)] = f.read()
    return found


def held_digests(*roots: Path) -> set:
    """Digests of every regular file under the roots, state folders (quarantine) included."""
    return {digest(b) for r in roots for b in regular_files(r, skip_state=False).values()}


def assert_kept(contents: Dict[str, bytes], roots: Sequence[Path], when: str) -> None:
    """Every content (label -> bytes) is still held by some file under roots."""
    held = held_digests(*roots)
    lost = sorted(label for label, data in contents.items() if digest(data) not in held)
    assert not lost, f"content lost {when}: {lost}"


def write(path: Path, data: bytes, mtime_ns: int = OLD_NS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def payload(seed: str, size: int) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.getrandbits(8) for _ in range(size))


def model(rel: str, seed: str, size: int = 4096) -> bytes:
    """A valid model file (the audit lets it through); one size per payload size, whatever the seed."""
    return as_model(rel, payload(seed, size))


def rewrite_in_place(path: Path, data: bytes) -> None:
    """What `cp -p new old` does to an existing name: same inode, new bytes, the old times put back."""
    before = os.stat(path)
    assert len(data) == before.st_size
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate(len(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns) == \
        (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns)


def cli_ok(args: Sequence, env: Dict[str, str], ok: Tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    proc = run_cli(args, env, check=None)
    assert proc.returncode in ok and "Traceback" not in proc.stderr, (
        f"{args[0]}: exit {proc.returncode}, expected one of {ok}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


class World:
    """A ComfyUI folder (models, no YAML yet) and a store, under one root."""

    def __init__(self, root: Path, pod: Files, store: Files, store_at: Optional[Path] = None) -> None:
        self.root = root
        self.comfyui = root / "ComfyUI"
        self.models = self.comfyui / "models"
        self.store = store_at if store_at is not None else root / "store"
        for rel, data in pod.items():
            write(self.models / rel, data)
        for rel, data in store.items():
            write(self.store / rel, data, OLD_NS - 7_000_000_000)
        self.models.mkdir(parents=True, exist_ok=True)
        self.store.mkdir(parents=True, exist_ok=True)

    def args(self, *extra: str) -> list:
        return ["--comfyui", str(self.comfyui), "--target", str(self.store), *extra]

    def pod_files(self) -> Files:
        return regular_files(self.models, skip_state=True)

    def store_files(self) -> Files:
        return regular_files(self.store, skip_state=True)

    def inodes(self) -> Dict[str, int]:
        return {rel: os.stat(self.models / rel).st_ino for rel in self.pod_files()}


def warm(world: World, env: Dict[str, str], how: str) -> None:
    """Fill the digest cache (and the audit's verdicts) the way a user does before a run. The
    files were made just now: first wait out the racy window, so the entries are trusted later
    (else every one would be read again anyway and the stale entry would never be offered)."""
    past_racy_window()
    if how == "plan":
        cli_ok(["plan", *world.args()], env)
    else:
        cli_ok(["scan", "--comfyui", str(world.comfyui)], env)


def run_purge_rollback(world: World, env: Dict[str, str], purge: bool,
                       check: Callable[[str], None]) -> None:
    """run, optionally purge --permanent, then rollback; `check(after_what)` after each command."""
    cli_ok(["run", *world.args("--yes")], env, ok=(0, 1))
    check("run")
    if purge:
        cli_ok(["purge", "--target", str(world.store), "--permanent", "--yes"], env, ok=(0, 1))
        check("purge --permanent")
    cli_ok(["rollback", "--target", str(world.store), "--yes"], env, ok=(0, 1))
    check("rollback")


# --- 1. a model rewritten in place, size and mtime kept ------------------------------------------------

@pytest.fixture(params=["same-fs", "cross-fs"])
def store_at(request, tmp_path) -> Optional[Path]:
    """Where the store goes: beside the pod (None), or on a second filesystem (copies, not links)."""
    return None if request.param == "same-fs" else request.getfixturevalue("other_fs") / "store"


@pytest.mark.slow
@pytest.mark.parametrize("purge", [True, False], ids=["purged", "not-purged"])
@pytest.mark.parametrize("warm_with", ["plan", "scan"])
def test_rewrite_in_place_with_times_kept_loses_nothing(tmp_path, cli_env, purge, warm_with, store_at):
    """Issue 12 as it happened: the store holds A at loras/m.safetensors, so does the pod; a plan
    warms the cache; the pod's file is rewritten in place with B (same size, mtime put back, same
    inode). B must stay the pod's model and never be lost; after rollback the name holds B."""
    rel = "loras/m.safetensors"
    a, b = model(rel, "model A"), model(rel, "model B")
    other = model("checkpoints/other.safetensors", "only in the pod", 3000)
    assert len(a) == len(b) and a != b
    world = World(tmp_path / "pod", {rel: a, "checkpoints/other.safetensors": other}, {rel: a}, store_at)
    warm(world, cli_env, warm_with)

    rewrite_in_place(world.models / rel, b)
    contents = {"B (the pod's model now)": b, "A (the store's model)": a, "other": other}

    def check(after: str) -> None:
        assert_kept(contents, [world.comfyui, world.store], f"after {after}")

    run_purge_rollback(world, cli_env, purge, check)
    assert world.pod_files() == {rel: b, "checkpoints/other.safetensors": other}, \
        "after rollback the pod's names must hold the bytes they had before the run"
    assert world.store_files() == {rel: a}, "after rollback the store holds what it held before"


# --- 2. a pod rebuilt from a template: freed inodes reused ---------------------------------------------

TEMPLATE_POD = {        # rel -> (seed, payload size); what the store holds is below
    "loras/a.safetensors": ("a", 4096),             # already there under its name
    "checkpoints/b.safetensors": ("b", 5000),       # the same content stored under another name
    "vae/c.safetensors": ("c", 3000),               # only in the pod: moved
    "loras/d.safetensors": ("d", 2500),             # d and e: duplicates within the pod
    "loras/e.safetensors": ("d", 2500),
}
TEMPLATE_STORE = {"loras/a.safetensors": ("a", 4096), "checkpoints/stored_b.safetensors": ("b", 5000)}


def _recreate(world: World, order: List[str], new: Files, times: Dict[str, Tuple[int, int]]) -> None:
    for rel in order:
        os.unlink(world.models / rel)
    for rel in order:
        with open(world.models / rel, "wb") as f:
            f.write(new[rel])
        os.utime(world.models / rel, ns=times[rel])


def rebuild_with_reused_inodes(world: World, new: Files) -> bool:
    """Remove the pod's files and write `new` under the same names with the same sizes and times;
    True once every name got its old inode back. ext4 hands out the lowest free inode of the
    folder's group first, so names are recreated in the order of their old inode numbers; the
    reverse order is tried too."""
    old = world.inodes()
    times = {rel: (os.stat(world.models / rel).st_atime_ns, os.stat(world.models / rel).st_mtime_ns)
             for rel in old}
    by_inode = sorted(old, key=old.__getitem__)
    for order in (by_inode, by_inode[::-1]):
        _recreate(world, order, new, times)
        if world.inodes() == old:
            return True
    return False


@contextlib.contextmanager
def fresh_ext4(where: Path) -> Iterator[Optional[Path]]:
    """A small ext4 image loop-mounted at where/mnt (root only), unmounted afterwards; None if not possible."""
    img, mnt = where / "ext4.img", where / "mnt"
    mnt.mkdir(parents=True)
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        yield None
        return
    with open(img, "wb") as f:
        f.truncate(32 << 20)
    ok = subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], capture_output=True).returncode == 0 and \
        subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True).returncode == 0
    try:
        yield mnt if ok else None
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _template_scenario(root: Path, env: Dict[str, str], purge: bool) -> bool:
    """Build, warm, rebuild with reused inodes, run/purge/rollback; False when inodes were not reused."""
    pod = {rel: model(rel, seed, size) for rel, (seed, size) in TEMPLATE_POD.items()}
    store = {rel: model(rel, seed, size) for rel, (seed, size) in TEMPLATE_STORE.items()}
    world = World(root, pod, store)
    warm(world, env, "plan")
    new = {rel: model(rel, f"rebuilt {rel}", size) for rel, (_, size) in TEMPLATE_POD.items()}
    assert all(len(new[rel]) == len(pod[rel]) and new[rel] != pod[rel] for rel in pod)
    if not rebuild_with_reused_inodes(world, new):
        return False
    assert world.pod_files() == new
    contents = {f"pod {rel} (rebuilt)": data for rel, data in new.items()}
    contents.update({f"store {rel}": data for rel, data in store.items()})

    def check(after: str) -> None:
        assert_kept(contents, [world.comfyui, world.store], f"after {after}")

    run_purge_rollback(world, env, purge, check)
    assert world.pod_files() == new, "after rollback every pod name must hold its own (rebuilt) bytes"
    assert world.store_files() == store, "after rollback the store holds what it held before"
    return True


@pytest.mark.parametrize("purge", [True, False], ids=["purged", "not-purged"])
def test_pod_rebuilt_from_template_with_reused_inodes(tmp_path, cli_env, purge):
    """scan/plan, then every pod file removed and recreated with other bytes of the same size and
    mtime, each on its old inode number (checked before anything is asserted); run -> purge
    --permanent -> rollback gives every model its own bytes and loses none."""
    if _template_scenario(tmp_path / "pod", cli_env, purge):
        return
    with fresh_ext4(tmp_path / "ext4") as mnt:
        if mnt is None:
            pytest.skip("freed inodes were not reused in tmp_path (in order or in reverse), and no ext4 "
                        "image can be loop-mounted here (needs root, mkfs.ext4, loop devices)")
        if not _template_scenario(mnt / "pod", cli_env, purge):
            pytest.skip("freed inodes were not reused, not even on a fresh loop-mounted ext4")


# --- 3. property: random stale facts between the cache's warm-up and the run ---------------------------

NAMES = ["loras/a.safetensors", "loras/b.safetensors", "loras/sub/c.safetensors",
         "checkpoints/d.safetensors", "checkpoints/e.safetensors"]
SPARE = ["loras/renamed_1.safetensors", "checkpoints/renamed_2.safetensors"]
SIZES = [2048, 2048, 2048, 3072, 3072]        # content i has payload SIZES[i]: same sizes collide


def content(i: int) -> bytes:
    return as_model("x.safetensors", payload(f"content {i}", SIZES[i]))


def fresh_like(old: bytes, tag: str) -> bytes:
    """Another valid model of exactly old's size."""
    n = int.from_bytes(old[:8], "little") + 8
    fresh = old[:n] + payload(tag, len(old) - n)
    return fresh if fresh != old else old[:n] + bytes(b ^ 0xFF for b in old[n:])


def apply_op(models: Path, op: tuple, k: int) -> None:
    """One stale-making change, times kept where the name is kept; never destroys a content
    (a rename only to a free name)."""
    present = sorted(rel for rel in regular_files(models, skip_state=True))
    if not present:
        return
    kind, i, j = op
    rel = present[i % len(present)]
    path = models / rel
    st0 = os.stat(path)
    times = (st0.st_atime_ns, st0.st_mtime_ns)
    if kind == "rewrite":
        rewrite_in_place(path, fresh_like(path.read_bytes(), f"rewrite {k}"))
    elif kind == "recreate":
        data = fresh_like(path.read_bytes(), f"recreate {k}")
        os.unlink(path)
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, ns=times)
    elif kind == "rename":
        free = [s for s in SPARE if not (models / s).exists()]
        if free:
            dst = models / free[j % len(free)]
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.rename(path, dst)
    elif kind == "swap":
        other = models / present[j % len(present)]
        if other != path:
            tmp = path.parent / f".swap-{k}"
            os.rename(path, tmp)
            os.rename(other, path)
            os.rename(tmp, other)


def fork_cli(argv: Sequence[str], env: Dict[str, str], out: str, pre: Optional[Callable[[], None]] = None,
             timeout: float = 60) -> Tuple[int, str]:
    """`comfy-migrate ARGV` in a forked child (the package is imported once, here); (exit, output)."""
    import migrate.cli    # noqa: F401  (imported before forking)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.environ.clear()
            os.environ.update(env)
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
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"{argv[0]} timed out after {timeout} s")
        time.sleep(0.002)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    with open(out, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    return code, text


def forked_ok(argv: Sequence[str], env: Dict[str, str], out: str, ok=(0,), pre=None) -> str:
    code, text = fork_cli(argv, env, out, pre)
    assert code in ok and "Traceback" not in text, f"{argv[0]}: exit {code}, expected one of {ok}\n{text}"
    return text


op_st = st.tuples(st.sampled_from(["rewrite", "rename", "recreate", "swap"]),
                  st.integers(0, 9), st.integers(0, 9))
world_st = st.fixed_dictionaries({
    # pod: name -> content index (some names absent); store: the same names, other contents possible
    "pod": st.dictionaries(st.sampled_from(NAMES), st.integers(0, 4), min_size=2, max_size=5),
    "store": st.dictionaries(st.sampled_from(NAMES + ["checkpoints/stored.safetensors"]),
                             st.integers(0, 4), max_size=4),
    "ops": st.lists(op_st, min_size=1, max_size=4),
    "warm": st.sampled_from(["plan", "scan"]),
    # between: the ops happen between the warming command and `run`; lock-wait: inside `run`,
    # after its first plan, while it would wait for the target's lock (its re-plan then runs);
    # execute: inside `run`, after its plan under the lock, before its first step
    "window": st.sampled_from(["between", "lock-wait", "execute"]),
    "purge": st.booleans(),
    "cross": st.booleans(),          # the store on a second filesystem (/dev/shm): copies, not links
})


@pytest.mark.slow
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(spec=world_st)
def test_property_stale_facts_never_lose_content(tmp_path, cli_env, spec):
    """Random rewrites in place (times kept), renames, deletes + recreates of the same size and
    mtime, and swaps of two files, applied after the cache is warm: after run, purge --permanent
    and rollback, every content the pod and the store held right before the run still exists; after
    rollback every pod name holds exactly its bytes of right before the run, the store its own."""
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    other = None
    if spec["cross"] and os.path.isdir("/dev/shm") and os.stat("/dev/shm").st_dev != os.stat(tmp_path).st_dev:
        other = Path(tempfile.mkdtemp(prefix="comfy-migrate-test-", dir="/dev/shm"))
    try:
        env = dict(cli_env)
        for var, sub in (("HOME", "home"), ("XDG_CACHE_HOME", "cache")):
            (base / sub).mkdir()
            env[var] = str(base / sub)
        env["COMFY_MIGRATE_CACHE"] = str(base / "cache" / "digests.sqlite")
        world = World(base / "w", {rel: content(i) for rel, i in spec["pod"].items()},
                      {rel: content(i) for rel, i in spec["store"].items()}, other and other / "store")
        out = str(base / "cli.out")
        snap_path = base / "before-run.pickle"

        def mutate() -> None:
            for k, op in enumerate(spec["ops"]):
                apply_op(world.models, op, k)
            with open(snap_path, "wb") as f:
                pickle.dump((world.pod_files(), world.store_files()), f)

        past_racy_window()        # the cache's entries are then trusted (see warm)
        if spec["warm"] == "plan":
            forked_ok(["plan", *world.args()], env, out)
        else:
            forked_ok(["scan", "--comfyui", str(world.comfyui)], env, out)
        pre = None
        if spec["window"] == "between":
            mutate()
        else:
            def pre() -> None:      # in the `run` child: change the files just before that moment
                import migrate.app.execute
                import migrate.app.migrate
                module, name = ((migrate.app.migrate, "take_lock") if spec["window"] == "lock-wait"
                                else (migrate.app.execute, "execute_plan"))
                real = getattr(module, name)

                def changed_first(*a, **kw):
                    mutate()
                    return real(*a, **kw)
                setattr(module, name, changed_first)

        text = forked_ok(["run", *world.args("--yes")], env, out, ok=(0, 1), pre=pre)
        if not snap_path.exists():      # nothing to do (every name a conflict, say): no lock taken
            assert "nothing to do" in text, text
            mutate()
        with open(snap_path, "rb") as f:
            pod_before, store_before = pickle.load(f)
        contents = {f"pod {rel}": data for rel, data in pod_before.items()}
        contents.update({f"store {rel}": data for rel, data in store_before.items()})
        roots = [world.comfyui, world.store]
        assert_kept(contents, roots, "after run")
        if spec["purge"]:
            forked_ok(["purge", "--target", str(world.store), "--permanent", "--yes"], env, out, ok=(0, 1))
            assert_kept(contents, roots, "after purge --permanent")
        code, text = fork_cli(["rollback", "--target", str(world.store), "--yes"], env, out)
        assert code in (0, 1) or (code == 6 and "no run to roll back" in text), f"rollback: exit {code}\n{text}"
        assert "Traceback" not in text, text
        assert_kept(contents, roots, "after rollback")
        pod_after, store_after = world.pod_files(), world.store_files()
        assert {r: digest(d) for r, d in pod_after.items()} == {r: digest(d) for r, d in pod_before.items()}, \
            "after rollback the pod's names must hold exactly their bytes of right before the run"
        assert {r: digest(d) for r, d in store_after.items()} == {r: digest(d) for r, d in store_before.items()}, \
            "after rollback the store must hold what it held before the run"
    finally:
        shutil.rmtree(base, ignore_errors=True)
        if other is not None:
            shutil.rmtree(other, ignore_errors=True)


# --- 4. two names of one inode stay one inode through purge + rollback ---------------------------------

@pytest.mark.parametrize("stored", [False, True], ids=["new-to-the-store", "already-there"])
def test_hardlinked_names_come_back_as_one_inode_after_purge(tmp_path, cli_env, stored, store_at):
    """Two source names of one inode (a hardlink) and a third name with the same bytes: after run,
    purge --permanent and rollback the two names are one inode again (with their bytes and times),
    the third its own file, and nothing is lost."""
    rel_x, rel_y, rel_z = "loras/x.safetensors", "loras/linked/y.safetensors", "checkpoints/z.safetensors"
    data = model(rel_x, "one inode", 3000)
    world = World(tmp_path / "pod", {rel_x: data, rel_z: data}, {rel_x: data} if stored else {}, store_at)
    (world.models / rel_y).parent.mkdir(parents=True, exist_ok=True)
    os.link(world.models / rel_x, world.models / rel_y)
    before = {rel: os.stat(world.models / rel) for rel in (rel_x, rel_y, rel_z)}
    warm(world, cli_env, "plan")

    def check(after: str) -> None:
        assert_kept({"the model": data}, [world.comfyui, world.store], f"after {after}")

    run_purge_rollback(world, cli_env, True, check)
    after = {rel: os.stat(world.models / rel) for rel in (rel_x, rel_y, rel_z)}
    assert world.pod_files() == {rel_x: data, rel_y: data, rel_z: data}
    assert after[rel_x].st_ino == after[rel_y].st_ino and after[rel_x].st_nlink == 2, \
        f"x and y were one inode before the run; now inodes {after[rel_x].st_ino} and {after[rel_y].st_ino}"
    assert after[rel_z].st_ino != after[rel_x].st_ino and after[rel_z].st_nlink == 1, \
        "z was a file of its own before the run"
    assert {rel: s.st_mtime_ns for rel, s in after.items()} == {rel: s.st_mtime_ns for rel, s in before.items()}
    assert world.store_files() == ({rel_x: data} if stored else {})


# --- 5. a stale audit verdict --------------------------------------------------------------------------

@pytest.mark.parametrize("warm_with", ["audit", "plan"])
def test_stale_audit_verdict_lets_no_broken_file_in(tmp_path, cli_env, warm_with):
    """The audit's verdicts are cached like digests: a good model audited (or planned), then
    overwritten in place by an HTML error page of the same size with its mtime put back, must be
    held back by the run (left at its place, kept out of the store), not moved on its old verdict."""
    rel = "loras/v.safetensors"
    good = model(rel, "a good model", 4096)
    page = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>"
    page += b"x" * (len(good) - len(page) - len(b"</body></html>\n")) + b"</body></html>\n"
    assert len(page) == len(good)
    other = model("checkpoints/other.safetensors", "only in the pod", 3000)
    world = World(tmp_path / "pod", {rel: good, "checkpoints/other.safetensors": other}, {})
    if warm_with == "audit":
        past_racy_window()
        cli_ok(["audit", "--comfyui", str(world.comfyui), "--target", str(world.store)], cli_env)
    else:
        warm(world, cli_env, "plan")
    rewrite_in_place(world.models / rel, page)

    cli_ok(["run", *world.args("--yes")], cli_env, ok=(0, 1))
    assert (world.models / rel).read_bytes() == page, "the broken file must stay at its place"
    assert digest(page) not in held_digests(world.store), "the broken file reached the store"
    cli_ok(["rollback", "--target", str(world.store), "--yes"], cli_env)
    assert world.pod_files() == {rel: page, "checkpoints/other.safetensors": other}


# --- 6. inode numbers >= 2^63 in the digest cache --------------------------------------------------------

def test_inode_past_2_to_the_63_round_trips_through_the_digest_cache(tmp_path):
    """FUSE mounts (rclone) report inode numbers >= 2^63, past SQLite's signed INTEGER: put, save,
    and a new instance gets the digest back for that stamp, and only for it (size, mtime, ctime)."""
    from migrate.disk.hashing import DigestCache
    db = str(tmp_path / "cache" / "digests.sqlite")
    read_ns = 1_700_000_000_000_000_000
    stamps = [(64769, 2 ** 63, 4096, OLD_NS, OLD_NS + 5), (64769, 2 ** 63 + 12345, 4096, OLD_NS, OLD_NS + 5),
              (2 ** 64 - 1, 2 ** 64 - 1, 1, OLD_NS, OLD_NS)]
    cache = DigestCache(db)
    for n, s in enumerate(stamps):
        cache.put(s, f"{n + 1:032x}", read_ns)
    cache.save()
    again = DigestCache(db)
    assert [again.get(s) for s in stamps] == [f"{n + 1:032x}" for n in range(len(stamps))]
    dev, ino, size, mtime, ctime = stamps[1]
    assert again.get((dev, ino, size, mtime, ctime + 1)) is None, "another ctime: not the file that was read"
    assert again.get((dev, ino, size + 1, mtime, ctime)) is None
    assert again.get((dev, ino - 2 ** 64, size, mtime, ctime)) is None, "confused with its signed twin"


def test_a_healthy_pod_raises_no_stale_fact_alarm(pod, cli_env):
    # Dedupes onto a copy this very run places, already-there files, a warm cache: nothing is stale,
    # and run must not say so (a false alarm re-plans for nothing and teaches users to ignore it).
    from conftest import past_racy_window
    past_racy_window()
    run_cli(["plan", *pod.args()], cli_env)                       # warms the cache: digests become beliefs
    proc = run_cli(["run", *pod.args("--yes")], cli_env, check=None)
    assert "cached digest" not in proc.stderr and "changed since the plan" not in proc.stderr, proc.stderr
