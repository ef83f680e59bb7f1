"""Fallbacks are planned, shown, tried in order on named errnos, and journalled (issue 25, dvc's _try_links).

The planner gives each placing action its ordered methods (a move's link or rename, else a verified
copy; a dedupe's hardlink, else a symlink); `plan` and its JSON show them; `run` tries the next only
where the filesystem refused the one before with an errno named for that pair (fsops.FALLS_BACK_ON),
journals each try with its method and the one that worked, and rollback undoes exactly that. A real
EXDEV (a store folder that is a symlink to another filesystem), an injected EMLINK, and an errno
that names no refusal (EIO: it fails the step, nothing else is tried).
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from conftest import as_model, run_cli, snapshot_tree
from test_rollback import snapshot
from migrate.disk import fsops
from migrate.disk.journal import read_log
from migrate.core.model import Method, Policy


def small_pod(tmp_path: Path) -> Path:
    """ComfyUI/models with two loras of one content (the second a dedupe) and a vae; its YAML absent."""
    comfyui = tmp_path / "ComfyUI"
    for rel, payload in (("loras/a.safetensors", b"A" * 5000), ("loras/twin.safetensors", b"A" * 5000),
                         ("vae/v.safetensors", b"V" * 7000)):
        p = comfyui / "models" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(as_model(rel, payload))
    (comfyui / "main.py").write_text("")
    return comfyui


def plan_in_process(comfyui: Path, target: Path):
    from migrate.disk.facts import gather, make_plan
    facts = gather([str(comfyui / "models")], str(target), str(comfyui / "extra_model_paths.yaml"), None)
    return make_plan(facts, Policy())


def steps(log: str) -> list:
    """(op, method, methods, fallback, outcome) of each placing step, in the log's order."""
    records = read_log(log)[0]
    ends = {r["step"]: r["type"] for r in records if r.get("type") in ("done", "fail") and "step" in r}
    return [(r["op"], r.get("method"), r.get("methods"), r.get("fallback"), ends.get(r["step"]))
            for r in records if r.get("type") == "begin" and r.get("method")]


def test_the_plan_and_its_json_show_the_fallbacks_in_order(tmp_path, cli_env):
    comfyui = small_pod(tmp_path)
    args = ["plan", "--comfyui", comfyui, "--target", tmp_path / "store"]
    doc = json.loads(run_cli([*args, "--format", "json"], cli_env).stdout)
    methods = {a["source"].split("/models/")[1]: a["methods"] for a in doc["actions"]}
    assert methods == {"loras/a.safetensors": ["hardlink", "copy"], "loras/twin.safetensors": ["hardlink", "symlink"],
                       "vae/v.safetensors": ["hardlink", "copy"]}
    text = run_cli(args, cli_env).stdout
    assert "fallbacks (if the filesystem refuses a method): 2 link, else copy; 1 link, else symlink" in text
    assert text.count("link, else copy") == 1       # once, in the note: the rows stay narrow
    verbose = run_cli([*args, "-v"], cli_env).stdout
    assert verbose.count("link, else copy") == 3 and "link, else symlink, quarantine" in verbose


def test_a_real_exdev_falls_back_to_a_verified_copy_journalled_and_undone_exactly(tmp_path, other_fs, cli_env):
    """The store's loras folder is a symlink to another filesystem: the probe (of the store's root) allows
    hardlinks, link(2) into that folder answers EXDEV, and the plan's next method, a copy, places it."""
    comfyui = small_pod(tmp_path)
    target = tmp_path / "store"
    target.mkdir()
    (other_fs / "loras").mkdir()
    (target / "loras").symlink_to(other_fs / "loras")
    before = (snapshot(comfyui, target), snapshot_tree(other_fs))
    plan = run_cli(["plan", "--comfyui", comfyui, "--target", target, "--format", "json"], cli_env).stdout
    assert ["hardlink", "copy"] in [a["methods"] for a in json.loads(plan)["actions"]]
    run_cli(["run", "--comfyui", comfyui, "--target", target, "--yes"], cli_env)
    (log,) = (target / ".comfy-migrate" / "runs").glob("*.jsonl")
    got = steps(str(log))
    assert ("link", "hardlink", ["hardlink", "copy"], None, "fail") in got     # refused: EXDEV
    assert ("copy", "copy", ["hardlink", "copy"], "EXDEV", "done") in got      # the one that worked
    assert ("link", "hardlink", ["hardlink", "copy"], None, "done") in got     # vae: not in the linked folder
    assert (other_fs / "loras" / "a.safetensors").read_bytes() == as_model("loras/a.safetensors", b"A" * 5000)
    assert not (comfyui / "models" / "loras" / "a.safetensors").exists()       # the source went to quarantine
    run_cli(["rollback", "--target", target, "--yes"], cli_env)
    assert snapshot(comfyui, target) == before[0]       # the store's state folder aside
    assert snapshot_tree(other_fs) == before[1]


def _refuse_links_into(monkeypatch, target: Path, code: int, only_from_store: bool = False) -> list:
    """os.link into `target` fails with `code` (from the store's own files only, with only_from_store)."""
    real = os.link
    refused = []

    def link(src, dst, *a, **kw):
        if os.fspath(dst).startswith(str(target) + "/") and "/.comfy-migrate/" not in os.fspath(dst) and (
                not only_from_store or os.fspath(src).startswith(str(target) + "/")):
            refused.append(os.fspath(dst))
            raise OSError(code, os.strerror(code), src, None, dst)
        return real(src, dst, *a, **kw)
    monkeypatch.setattr(os, "link", link)
    return refused


def test_an_emlink_on_a_dedupe_falls_back_to_a_symlink_and_rollback_is_exact(tmp_path, cli_env, monkeypatch):
    from migrate.app.execute import execute_plan
    comfyui = small_pod(tmp_path)
    target = tmp_path / "store"
    before = snapshot(comfyui, target)
    plan = plan_in_process(comfyui, target)
    refused = _refuse_links_into(monkeypatch, target, errno.EMLINK, only_from_store=True)
    rep = execute_plan(plan, ["test"])
    monkeypatch.undo()
    assert rep.ok and refused == [str(target / "loras" / "twin.safetensors")]
    got = steps(rep.log_path)
    assert ("dedupe", "hardlink", ["hardlink", "symlink"], None, "fail") in got
    assert ("symlink", "symlink", ["hardlink", "symlink"], "EMLINK", "done") in got
    assert os.readlink(target / "loras" / "twin.safetensors") == "a.safetensors"
    run_cli(["rollback", "--target", target, "--yes"], cli_env)
    assert snapshot(comfyui, target) == before


def test_an_errno_that_names_no_refusal_fails_the_step_and_tries_nothing_else(tmp_path, cli_env, monkeypatch):
    """EIO is not in FALLS_BACK_ON: the link fails, no copy is made, the source stays where it is."""
    from migrate.app.execute import execute_plan
    assert errno.EIO not in fsops.FALLS_BACK_ON[(Method.HARDLINK, Method.COPY)]
    comfyui = small_pod(tmp_path)
    target = tmp_path / "store"
    before = snapshot_tree(comfyui)
    plan = plan_in_process(comfyui, target)
    _refuse_links_into(monkeypatch, target, errno.EIO)
    rep = execute_plan(plan, ["test"])
    monkeypatch.undo()
    # (twin's dedupe fails too: the copy it was to share was never placed)
    assert not rep.ok and {Path(p.path).name for p in rep.problems} == {"a.safetensors", "v.safetensors",
                                                                         "twin.safetensors"}
    got = steps(rep.log_path)
    assert [g for g in got if g[0] == "link"] == [("link", "hardlink", ["hardlink", "copy"], None, "fail")] * 2
    assert not [g for g in got if g[0] == "copy"]
    records = read_log(rep.log_path)[0]
    assert not any("instead" in str(r.get("error")) for r in records if r.get("type") == "fail")
    assert not (target / "loras" / "a.safetensors").exists()
    assert (comfyui / "models" / "loras" / "a.safetensors").exists()
    run_cli(["rollback", "--target", target, "--yes"], cli_env)
    assert snapshot_tree(comfyui) == before


@pytest.mark.parametrize("code, fallback", [(errno.EXDEV, True), (errno.EMLINK, True), (errno.EACCES, False)])
def test_a_moves_link_falls_back_only_on_its_named_errnos(tmp_path, monkeypatch, code, fallback):
    """EACCES is named for a dedupe's symlink (FALLBACK_ERRNOS) but not for a move's copy: a copy into
    the same folder would be refused the same way."""
    from migrate.app.execute import execute_plan
    comfyui = small_pod(tmp_path)
    target = tmp_path / "store"
    plan = plan_in_process(comfyui, target)
    _refuse_links_into(monkeypatch, target, code)
    rep = execute_plan(plan, ["test"])
    monkeypatch.undo()
    got = steps(rep.log_path)
    assert [g[1:] for g in got if g[0] == "link"] == [("hardlink", ["hardlink", "copy"], None, "fail")] * 2
    copied = [g for g in got if g[0] == "copy"]
    assert [g[3] for g in copied] == ([errno.errorcode[code]] * 2 if fallback else [])
    assert (target / "vae" / "v.safetensors").exists() is fallback
