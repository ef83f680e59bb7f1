"""`verify` checks the pod, not one run (issue 12): every live run of this pod, every name they took
out of the sources (placed, "already there", kept by a rollback), and `--quick`.

Real files in tmp_path, the real CLI as a subprocess (conftest's `run_cli`, state confined to
tmp_path); the pure pieces (which runs are the pod's, which names are checked) on plain records.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import as_model, run_cli, run_leaving_conflicts
from migrate.disk.journal import read_log
from migrate.core.model import STATE_DIR
from migrate.app.verify import claims, pod_runs

VAE = "vae/wan_2.1_vae.safetensors"                              # the demo store already holds it
S2V = "diffusion_models/wan2.2_s2v_14B_fp8_scaled.safetensors"    # placed by the first run


def migrate(pod, env, check=1, prefix=None) -> str:
    """One `run` of the pod; returns its run id (the newest log). Exit 1 by default: the demo pod's
    deliberate conflict stays where it is."""
    if prefix is None and check == 1:
        run_leaving_conflicts(pod.args("--yes"), env)
    elif prefix is None:
        run_cli(["run", *pod.args("--yes")], env, check=check)
    else:
        proc = subprocess.run([*prefix, "-m", "migrate", "run", *pod.args("--yes")], env=env,
                              capture_output=True, text=True, cwd=env["HOME"])
        assert proc.returncode == check, proc.stderr
    return logs(pod.target)[-1]["run"]


def logs(target: Path) -> List[dict]:
    """The header of each run log in the target, oldest first."""
    runs = sorted(p for p in (target / STATE_DIR / "runs").glob("*.jsonl") if not p.name.endswith(".rollback.jsonl"))
    return [read_log(str(p))[0][0] for p in runs]


def records_of(target: Path, run_id: str) -> List[dict]:
    return read_log(str(target / STATE_DIR / "runs" / f"{run_id}.jsonl"))[0]


def verify(pod, env, *extra, check=0):
    return run_cli(["verify", "--comfyui", pod.comfyui, "--target", pod.target, *extra], env, check=check)


def verify_json(pod, env, *extra, check=0) -> dict:
    return json.loads(verify(pod, env, "--format", "json", *extra, check=check).stdout)


def add_model(pod, rel: str, payload: bytes) -> Path:
    path = pod.models / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(as_model(rel, payload))
    return path


def two_runs(pod, env):
    """The demo pod migrated, then a model added to it and migrated by a second run."""
    first = migrate(pod, env)
    add_model(pod, "loras/added_later.safetensors", b"a lora downloaded after the first run" * 500)
    second = migrate(pod, env)
    assert first < second
    return first, second


def corrupt_same_size(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-100:] = bytes(b ^ 0xFF for b in data[-100:])
    path.write_bytes(bytes(data))


def on_host(host: str) -> List[str]:
    """A python that runs as if on another machine: its own host name (a UTS namespace)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-u", "true"]).returncode != 0:
        pytest.skip("no `unshare -u` here to give a run another host name")
    return ["unshare", "-u", sys.executable, "-c",
            f"import os, socket, sys; socket.sethostname({host!r}); os.execv(sys.executable, [sys.executable] + sys.argv[1:])"]


# --- (1) a damaged "already there" model ------------------------------------------------------------

def test_damaged_model_that_was_already_there_fails(pod, cli_env):
    run_id = migrate(pod, cli_env)
    stored = pod.target / VAE
    # The run placed nothing at this name: it removed its source because the store held the content.
    ops = {r.get("op") for r in records_of(pod.target, run_id) if r.get("type") == "begin" and r.get("dst") == str(stored)}
    assert ops == {"quarantine"}
    assert "all good" in verify(pod, cli_env).stdout
    size = stored.stat().st_size
    corrupt_same_size(stored)
    assert stored.stat().st_size == size
    proc = verify(pod, cli_env, check=8)
    assert f"changed: {stored}" in proc.stdout and "problems found" in proc.stdout
    assert verify_json(pod, cli_env, check=8)["changed"] == [str(stored)]


# --- (2) an older run's model deleted from the store ------------------------------------------------

def test_older_runs_model_deleted_from_the_store_fails(pod, cli_env):
    first, second = two_runs(pod, cli_env)
    gone = pod.target / S2V
    gone.unlink()
    proc = verify(pod, cli_env, check=8)
    assert f"missing: {gone}" in proc.stdout and "problems found" in proc.stdout
    doc = verify_json(pod, cli_env, check=8)
    assert doc["missing"] == [str(gone)] and doc["runs"] == [first, second] and not doc["ok"]


# --- (3) a healthy pod with two runs ----------------------------------------------------------------

def test_healthy_pod_with_two_runs_passes(pod, cli_env):
    first, second = two_runs(pod, cli_env)
    proc = verify(pod, cli_env)
    lines = proc.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines if ln.startswith("run ")] == [f"run {first}", f"run {second}"]
    assert lines[-1] == "all good"
    doc = verify_json(pod, cli_env)
    assert doc["ok"] and doc["runs"] == [first, second] and doc["quick"] is False
    assert doc["run"] == second       # today's key: the (newest) run checked
    # Today's keys are all still there.
    assert {"run", "checked", "missing", "changed", "shadowed", "orphaned", "unset_variables",
            "broken_link_backs", "ok"} <= set(doc)
    # Every name either run took out of the sources is checked: placed, and already there.
    assert doc["per_run"][second] == 1 and doc["checked"] == doc["per_run"][first] + 1
    assert doc["checked"] == len(claims([(h, records_of(pod.target, h)) for h in (first, second)]))


# --- (4) a run id narrows it ------------------------------------------------------------------------

def test_run_id_narrows_verify_to_that_run(pod, cli_env):
    first, second = two_runs(pod, cli_env)
    (pod.target / S2V).unlink()                # the first run's model
    doc = verify_json(pod, cli_env, second)
    assert doc["ok"] and doc["runs"] == [second] and doc["checked"] == 1
    assert f"run {second}: 1 files checked" in verify(pod, cli_env, second).stdout
    doc = verify_json(pod, cli_env, first, check=8)
    assert doc["runs"] == [first] and doc["missing"] == [str(pod.target / S2V)]


# --- (5) --quick ------------------------------------------------------------------------------------

def rchar_of_verify(pod, env, *extra) -> int:
    """Bytes the verify process read through read() calls (Linux /proc/self/io), at its exit."""
    code = ("import atexit, runpy, sys\n"
            "def show():\n"
            "    sys.stderr.write('RCHAR ' + [l for l in open('/proc/self/io') if l.startswith('rchar')][0])\n"
            "atexit.register(show)\n"
            "sys.argv = ['migrate'] + sys.argv[1:]\n"
            "runpy.run_module('migrate', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code, "verify", "--comfyui", str(pod.comfyui), "--target",
                           str(pod.target), *extra], env=env, capture_output=True, text=True, cwd=env["HOME"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return int(proc.stderr.rsplit("RCHAR rchar:", 1)[1].split()[0])


def test_quick_passes_healthy_fails_on_size_and_reads_no_file(pod, cli_env):
    first, second = two_runs(pod, cli_env)
    proc = verify(pod, cli_env, "--quick")
    assert "quick: sizes and mtimes compared" in proc.stdout and proc.stdout.endswith("all good\n")
    doc = verify_json(pod, cli_env, "--quick")
    assert doc["ok"] and doc["quick"] is True and doc["runs"] == [first, second]
    assert doc["size_only"] == []   # the demo's "already there" file: its mtime is in the catalogue

    # It reads no model file: a same-size rewrite with the mtime put back passes quick, not a re-hash...
    stored = pod.target / VAE
    st = stored.stat()
    corrupt_same_size(stored)
    os.utime(stored, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert verify_json(pod, cli_env, "--quick")["ok"]
    assert verify_json(pod, cli_env, check=8)["changed"] == [str(stored)]
    # ... and reads, in all, less than the store holds, where a re-hash reads all of it.
    if not os.path.exists("/proc/self/io"):
        pytest.skip("no /proc/self/io to count the bytes a process reads")
    checked = claims([(h, records_of(pod.target, h)) for h in (first, second)])
    total = sum(c.size for c in checked.values())
    corrupt_same_size(stored)                  # undone: the full verify passes again
    os.utime(stored, ns=(st.st_atime_ns, st.st_mtime_ns))
    quick, full = rchar_of_verify(pod, cli_env, "--quick"), rchar_of_verify(pod, cli_env)
    assert quick < total and full - quick >= 0.9 * total, (quick, full, total)

    # A size change fails it, naming the file.
    grown = pod.target / S2V
    with open(grown, "ab") as f:
        f.write(b"\0")
    proc = verify(pod, cli_env, "--quick", check=8)
    assert f"changed: {grown}" in proc.stdout and "quick:" in proc.stdout and "problems found" in proc.stdout


def test_quick_without_a_logged_mtime_says_it_compared_the_size_alone(pod, cli_env):
    """A file already there has no mtime in the log; without the catalogue only its size is known."""
    migrate(pod, cli_env)
    (pod.target / STATE_DIR / "catalogue.jsonl").unlink()
    proc = verify(pod, cli_env, "--quick")
    assert "(1 by size alone" in proc.stdout and proc.stdout.endswith("all good\n")
    assert verify_json(pod, cli_env, "--quick")["size_only"] == [str(pod.target / VAE)]


# --- (6) a new host name: the pod is its YAML -------------------------------------------------------

def test_verify_finds_the_pods_runs_after_the_host_name_changed(pod, cli_env):
    """RunPod gives a pod a new host name on each deploy; the volume, its ComfyUI and YAML stay."""
    run_id = migrate(pod, cli_env, prefix=on_host("pod-before-redeploy"))
    assert logs(pod.target)[0]["host"] == "pod-before-redeploy" != os.uname().nodename
    doc = verify_json(pod, cli_env)
    assert doc["runs"] == [run_id] and doc["ok"]
    # Without a ComfyUI folder: the run whose sources are all on this machine.
    proc = run_cli(["-v", "verify", "--target", pod.target, "--format", "json"], cli_env)
    assert json.loads(proc.stdout)["runs"] == [run_id] and "sources are all on this machine" in proc.stderr
    # A damaged model of that run still fails it.
    corrupt_same_size(pod.target / S2V)
    assert verify_json(pod, cli_env, check=8)["changed"] == [str(pod.target / S2V)]


def head(run: str, host: str, yaml: str, sources: List[str], target: str = "/store") -> List[dict]:
    return [{"type": "header", "run": run, "host": host, "yaml": yaml, "sources": sources, "target": target}]


def test_pod_runs_are_chosen_by_yaml_not_host(tmp_path):
    here = tmp_path / "ComfyUI"
    (here / "models").mkdir(parents=True)
    yaml = str(here / "extra_model_paths.yaml")
    runs = [("r1", head("r1", "old-name", yaml, [str(here / "models")])),
            ("r2", head("r2", "this-host", "/elsewhere/ComfyUI/extra_model_paths.yaml", ["/elsewhere/ComfyUI/models"])),
            ("r3", head("r3", "newer-name", yaml, [str(here / "models")]))]
    mine, how = pod_runs(runs, "/store", yaml, "this-host")
    assert [r for r, _ in mine] == ["r1", "r3"] and yaml in how     # not r2, though it ran on this host name
    # No ComfyUI found: the runs whose sources are all here; none: this host's.
    assert [r for r, _ in pod_runs(runs, "/store", None, "this-host")[0]] == ["r1", "r3"]
    shutil.rmtree(here)
    assert [r for r, _ in pod_runs(runs, "/store", None, "this-host")[0]] == ["r2"]
    assert pod_runs(runs, "/store", None, "unknown")[0] == []


def test_pod_runs_read_the_yaml_through_a_remount(tmp_path):
    """The volume mounted elsewhere (/workspace -> /runpod-volume): the logged YAML moved with it."""
    old, new = tmp_path / "workspace", tmp_path / "runpod-volume"
    (new / "ComfyUI").mkdir(parents=True)
    (new / "models").mkdir()
    runs = [("r1", head("r1", "old-name", str(old / "ComfyUI/extra_model_paths.yaml"), [str(old / "ComfyUI/models")],
                        str(old / "models")))]
    assert pod_runs(runs, str(new / "models"), str(new / "ComfyUI/extra_model_paths.yaml"), "x")[0] == runs


# --- which names are checked ------------------------------------------------------------------------

def step(n: int, op: str, dst: str, digest: str, **extra) -> List[dict]:
    return [dict({"type": "begin", "step": n, "op": op, "dst": dst, "digest": digest, "size": 10,
                  "mtime_ns": 5}, **extra), {"type": "done", "step": n}]


def test_claims_cover_placed_already_there_and_kept_names_newest_record_wins():
    r1 = [{"type": "header", "run": "r1", "target": "/s"},
          *step(2, "rename", "/s/loras/a.safetensors", "da"),
          *step(4, "quarantine", "/s/vae/there.safetensors", "dv", stored="/s/vae/there.safetensors", mtime_ns=1),
          {"type": "begin", "step": 6, "op": "copy", "dst": "/s/vae/begun.safetensors", "digest": "db"},
          {"type": "begin", "step": 7, "op": "mkdir", "path": "/s/x"}, {"type": "done", "step": 7},
          *step(8, "dedupe", "/s/loras/b.safetensors", "da", stored="/s/loras/a.safetensors", mtime_ns=3),
          *step(10, "symlink", "/s/loras/sub/c.safetensors", "da", to="../a.safetensors", mtime_ns=4)]
    r2 = [{"type": "header", "run": "r2", "target": "/mnt/s"},            # the same store, mounted elsewhere
          *step(2, "unlink", "/mnt/s/loras/a.safetensors", "da", mtime_ns=9)]
    kept = [{"type": "keep", "rel": "checkpoints/k.safetensors", "digest": "dk", "size": 3, "for": ["r1", "other"]},
            {"type": "keep", "rel": "checkpoints/not_ours.safetensors", "digest": "dn", "size": 3, "for": ["other"]}]
    got = claims([("r1", r1), ("r2", r2)], kept)
    assert sorted(got) == ["checkpoints/k.safetensors", "loras/a.safetensors", "loras/b.safetensors",
                           "loras/sub/c.safetensors", "vae/there.safetensors"]
    a, there, k = got["loras/a.safetensors"], got["vae/there.safetensors"], got["checkpoints/k.safetensors"]
    assert (a.run, a.op, a.mtime_ns) == ("r2", "unlink", 9)        # checked once: the newest run's record
    # A dedupe's hardlink and a symlink are the stored file: its mtime, not their sources'.
    assert got["loras/b.safetensors"].mtime_ns == got["loras/sub/c.safetensors"].mtime_ns == 9
    assert (there.op, there.digest, there.mtime_ns) == ("quarantine", "dv", None)   # another file: mtime unknown
    assert (k.run, k.op, k.digest, k.size) == ("r1", "keep", "dk", 3)


def test_claims_keep_a_logged_mtime_when_a_newer_run_found_the_file_already_there():
    r1 = [{"type": "header", "run": "r1", "target": "/s"}, *step(2, "copy", "/s/loras/a.safetensors", "da", mtime_ns=7)]
    r2 = [{"type": "header", "run": "r2", "target": "/s"},
          *step(2, "quarantine", "/s/loras/a.safetensors", "da", stored="/s/loras/a.safetensors", mtime_ns=99)]
    c = claims([("r1", r1), ("r2", r2)])["loras/a.safetensors"]
    assert (c.run, c.op, c.mtime_ns) == ("r2", "quarantine", 7)


def test_quick_compares_mtimes_at_the_precision_the_run_probed(pod, cli_env):
    """A store whose filesystem keeps whole seconds (MooseFS: a copy shows its source's nanoseconds
    right after the publish, whole seconds once the server has it) is healthy: `--quick` compares at
    the step the run's probe logged for it, as rollback does (it compared nanoseconds exactly and
    called every such file changed). A change beyond the step is still one."""
    from migrate.disk.journal import _canonical, _sum
    run_id = migrate(pod, cli_env)
    log = pod.target / STATE_DIR / "runs" / f"{run_id}.jsonl"
    records = records_of(pod.target, run_id)
    head = dict(records[0])
    head["fs"] = dict(head["fs"], **{str(pod.target): dict(head["fs"][str(pod.target)], mtime_step_ns=10 ** 9)})
    records[0] = head
    for i, rec in enumerate(records):            # sealed again, as the writer would have
        rec = dict(rec, **({"prev": records[i - 1]["sum"]} if i else {}))
        rec.pop("sum")
        rec["sum"] = _sum(rec)
        records[i] = rec
    log.write_bytes(b"".join(_canonical(r) + b"\n" for r in records))
    timed = [c for c in claims([(run_id, records)]).values() if c.mtime_ns is not None]
    assert timed
    for c in timed:                              # what the store shows once the server has the file
        whole = c.mtime_ns - c.mtime_ns % 10 ** 9
        os.utime(pod.target / c.rel, ns=(whole, whole), follow_symlinks=False)
    assert [c.mtime_ns % 10 ** 9 for c in timed].count(0) < len(timed)     # some were not whole seconds
    assert verify_json(pod, cli_env, "--quick")["ok"]
    later = pod.target / timed[0].rel
    os.utime(later, ns=(timed[0].mtime_ns + 5 * 10 ** 9,) * 2, follow_symlinks=False)
    assert verify_json(pod, cli_env, "--quick", check=8)["changed"] == [str(later)]
