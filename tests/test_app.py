"""The application layer without Click (issue 25): `migrate`, `rollback`, `verify`, `purge` and `attach`
called in-process on real pods in tmp_path return an Outcome whose exit code and JSON document
(views.outcome.doc) are what the CLI prints for the same pod (the CLI run as a subprocess on a twin
pod built alike: paths and run ids differ, nothing else; the HTML page of a run is the shell's)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import make_pod, run_cli, snapshot_tree
from migrate.app.attach_cmd import AttachRequest, attach
from migrate.app.common import Quiet
from migrate.app.migrate import MigrateRequest, migrate
from migrate.app.purge import PurgeRequest, purge
from migrate.app.rollback_cmd import RollbackRequest, rollback
from migrate.app.verify_cmd import VerifyRequest, verify
from migrate.core.errors import ExitCode, NotConfirmed
from migrate.views.outcome import doc, lines


def build_pod(root: Path):
    comfyui, target = make_pod.build(str(root))
    return os.path.realpath(comfyui), os.path.realpath(target)


@pytest.fixture
def twins(tmp_path, cli_env, monkeypatch):
    """Two pods built alike: `app` (for the in-process calls, with this process's state confined to
    tmp_path as cli_env confines the CLI's) and `cli` (for the subprocesses)."""
    for var in ("HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "COMFY_MIGRATE_CACHE",
                "COMFY_MIGRATE_TARGET"):
        monkeypatch.setenv(var, cli_env[var])
    for var in [v for v in os.environ if v.startswith("COMFY_MIGRATE_") and v not in cli_env] + ["COMFYUI_DIR"]:
        monkeypatch.delenv(var, raising=False)
    return build_pod(tmp_path / "app"), build_pod(tmp_path / "cli")


def same(doc: dict, root: str, runs: list) -> str:
    """The document as text, its pod's root and its run ids named alike (the twins differ only there)."""
    text = json.dumps(doc, sort_keys=True).replace(root, "<pod>")
    for i, rid in enumerate(runs):
        text = text.replace(rid, f"<run{i}>")
    return text


def contents(snap: dict) -> dict:
    """Each entry's kind, mode and bytes, outside the store's state folder (the run's logs stay)."""
    return {k: (v[0], v[1], v[5]) for k, v in snap.items() if ".comfy-migrate" not in k}


def stdout(said) -> str:
    """What a command prints on stdout of the lines a view says (views.outcome.lines)."""
    return "".join(text for channel, text in said if channel == "out")


def run_ids(target: str) -> list:
    runs = os.path.join(target, ".comfy-migrate", "runs")
    return sorted(n[:-len(".jsonl")] for n in os.listdir(runs) if n.endswith(".jsonl") and ".rollback" not in n)


def cli_json(args, env, code):
    proc = run_cli([*args, "--format", "json"], env, check=code)
    return json.loads(proc.stdout)


def test_migrate_verify_rollback_in_process_as_the_cli_says(twins, cli_env, tmp_path):
    (a_home, a_store), (b_home, b_store) = twins
    a_root, b_root = str(tmp_path / "app"), str(tmp_path / "cli")
    before = snapshot_tree(a_root)

    dry = migrate(MigrateRequest(comfyui=a_home, target=a_store, dry_run=True), Quiet())
    cli_dry = cli_json(["run", "--comfyui", a_home, "--target", a_store, "--dry-run"], cli_env, 0)
    assert (dry.state, dry.exit_code, doc(dry)) == ("dry_run", 0, cli_dry)      # the same pod: the same plan
    assert snapshot_tree(a_root) == before

    io = Quiet()
    ran = migrate(MigrateRequest(comfyui=a_home, target=a_store, yes=True), io)
    cli_ran = cli_json(["run", "--comfyui", b_home, "--target", b_store, "--yes"], cli_env, ExitCode.PROBLEMS)
    assert ran.state == "done" and ran.exit_code == ExitCode.PROBLEMS      # the demo pod's conflict stays
    assert [s["why"] for s in doc(ran)["stayed"]] == ["conflict"] and doc(ran)["placed"] > 0
    assert ran.page is None and os.path.isfile(cli_ran.pop("report"))      # the page is the shell's to write
    assert same(dict(doc(ran), report=None), a_root, run_ids(a_store)) == same(dict(cli_ran, report=None), b_root,
                                                                               run_ids(b_store))
    assert not [m for level, m in io.said if level == "warning"], io.said

    again = migrate(MigrateRequest(comfyui=a_home, target=a_store, yes=True), Quiet())
    cli_again = cli_json(["run", "--comfyui", b_home, "--target", b_store, "--yes"], cli_env, ExitCode.PROBLEMS)
    assert again.state == "nothing_to_do" and again.exit_code == ExitCode.PROBLEMS
    assert same(doc(again), a_root, run_ids(a_store)) == same(cli_again, b_root, run_ids(b_store))

    checked = verify(VerifyRequest(comfyui=a_home, target=a_store), Quiet())
    said = run_cli(["verify", "--comfyui", a_home, "--target", a_store], cli_env).stdout      # the text, same pod
    assert stdout(lines(checked, "table")) == said and said.endswith("all good\n")
    cli_checked = cli_json(["verify", "--comfyui", b_home, "--target", b_store], cli_env, 0)
    assert checked.exit_code == 0 and doc(checked)["ok"]
    assert same(doc(checked), a_root, run_ids(a_store)) == same(cli_checked, b_root, run_ids(b_store))

    preview = rollback(RollbackRequest(target=a_store, comfyui=a_home, dry_run=True), Quiet())
    cli_preview = cli_json(["rollback", "--target", a_store, "--comfyui", a_home, "--dry-run"], cli_env, 0)
    assert (preview.state, preview.exit_code, doc(preview)) == ("dry_run", 0, cli_preview)
    assert len(preview.plan.undos) == len(doc(preview)["steps"]) > 0
    said = run_cli(["rollback", "--target", a_store, "--comfyui", a_home, "--dry-run"], cli_env).stdout
    assert stdout(lines(preview, "table")) == said and said.startswith(f"rollback of run {run_ids(a_store)[0]} (")

    undone = rollback(RollbackRequest(target=a_store, comfyui=a_home, yes=True), Quiet())
    cli_undone = cli_json(["rollback", "--target", b_store, "--comfyui", b_home, "--yes"], cli_env, 0)
    assert undone.state == "done" and undone.exit_code == 0 and undone.report.undone > 0
    assert same(doc(undone), a_root, run_ids(a_store)) == same(cli_undone, b_root, run_ids(b_store))
    assert contents(snapshot_tree(a_root)) == contents(before)       # every name and byte back

    done = rollback(RollbackRequest(target=a_store, comfyui=a_home, yes=True), Quiet())
    cli_done = cli_json(["rollback", "--target", b_store, "--comfyui", b_home, "--yes"], cli_env, 0)
    assert done.state == "nothing" and done.exit_code == 0
    assert same(doc(done), a_root, run_ids(a_store)) == same(cli_done, b_root, run_ids(b_store))


def test_purge_and_attach_in_process_as_the_cli_says(twins, cli_env, tmp_path):
    (a_home, a_store), (b_home, b_store) = twins
    a_root, b_root = str(tmp_path / "app"), str(tmp_path / "cli")
    migrate(MigrateRequest(comfyui=a_home, target=a_store, yes=True), Quiet())
    cli_json(["run", "--comfyui", b_home, "--target", b_store, "--yes"], cli_env, ExitCode.PROBLEMS)

    io = Quiet()
    freed = purge(PurgeRequest(target=a_store, comfyui=a_home, permanent=True, yes=True), io)
    cli_freed = cli_json(["purge", "--target", b_store, "--comfyui", b_home, "--permanent", "--yes"], cli_env, 0)
    assert freed.state == "done" and freed.exit_code == 0 and doc(freed)["files"] > 0 and freed.freed > 0
    assert same(doc(freed), a_root, run_ids(a_store)) == same(cli_freed, b_root, run_ids(b_store))
    assert not any(f for _, _, f in os.walk(os.path.join(a_store, ".comfy-migrate", "quarantine")))

    empty = purge(PurgeRequest(target=a_store, comfyui=a_home, permanent=True, yes=True), Quiet())
    cli_empty = cli_json(["purge", "--target", b_store, "--comfyui", b_home, "--permanent", "--yes"], cli_env, 0)
    assert (empty.state, empty.exit_code) == ("empty", 0) and doc(empty) == cli_empty

    # A second ComfyUI (a rebuilt container) pointed at the store: attach writes its YAML section.
    for root in (a_root, b_root):
        Path(root, "second", "models").mkdir(parents=True)
        Path(root, "second", "main.py").write_text("")
    got = attach(AttachRequest(comfyui=os.path.join(a_root, "second"), target=a_store, yes=True), Quiet())
    cli_got = cli_json(["attach", "--comfyui", os.path.join(b_root, "second"), "--target", b_store, "--yes"], cli_env, 0)
    assert got.state == "done" and got.exit_code == 0 and doc(got)["yaml_written"]
    assert same(doc(got), a_root, run_ids(a_store)) == same(cli_got, b_root, run_ids(b_store))
    still = attach(AttachRequest(comfyui=os.path.join(a_root, "second"), target=a_store, yes=True), Quiet())
    assert (still.state, still.exit_code, doc(still)["nothing_to_do"]) == ("attached", 0, True)


def test_purge_and_rollback_find_the_runs_a_request_means_alike(twins, tmp_path):
    # common.find_run_logs: the one lookup both make (the store, the run named, else this pod's runs).
    from migrate.app.common import find_run_logs
    from migrate.core.errors import BadLog
    from migrate.disk.runlog import NothingToRollBack
    (a_home, a_store), _ = twins
    migrate(MigrateRequest(comfyui=a_home, target=a_store, yes=True), Quiet())
    (rid,) = run_ids(a_store)
    log = os.path.join(a_store, ".comfy-migrate", "runs", f"{rid}.jsonl")
    assert find_run_logs(Quiet(), a_store, None, a_home, live=True) == [log]                 # rollback's
    assert find_run_logs(Quiet(), a_store, None, a_home, live=False, all_logs=True) == [log]  # purge's
    assert find_run_logs(Quiet(), a_store, rid, None, live=True) == [log]                    # a run named
    rollback(RollbackRequest(target=a_store, comfyui=a_home, yes=True), Quiet())
    with pytest.raises(NothingToRollBack):
        find_run_logs(Quiet(), a_store, None, a_home, live=True)
    assert find_run_logs(Quiet(), a_store, None, a_home, live=False, all_logs=True) == [log]
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(BadLog, match=f"^no run to roll back in {bare} \\(it has no .comfy-migrate folder\\)"):
        find_run_logs(Quiet(), str(bare), None, a_home, live=True, none_here="no run to roll back in")
    with pytest.raises(BadLog, match=f"^no runs in {bare} "):
        find_run_logs(Quiet(), str(bare), None, a_home, live=False, all_logs=True)


def test_a_request_without_yes_asks_through_the_io_and_a_no_changes_nothing(twins, tmp_path):
    (a_home, a_store), _ = twins
    before = snapshot_tree(tmp_path / "app")

    class No(Quiet):
        def confirm(self, question: str) -> None:
            self.said.append(("asked", question))
            raise NotConfirmed("not confirmed; nothing was changed")

    io = No()
    with pytest.raises(NotConfirmed):
        migrate(MigrateRequest(comfyui=a_home, target=a_store), io)
    assert ("asked", f"Migrate into {a_store}?") in io.said
    assert snapshot_tree(tmp_path / "app") == before
