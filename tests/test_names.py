"""Issue 13: every name keeps its model. ComfyUI, restarted after a run, loads for every name the
bytes it loaded before, except the names the plan declares (name_changes); checked against
ComfyUI's own folder_paths.py + utils/extra_config.py (tests/comfyui_oracle.py), not our resolver.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from comfyui_oracle import comfyui_loads
from conftest import as_model, run_cli, run_leaving_conflicts, snapshot_tree

STATE = ".comfy-migrate"


def put(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(as_model(path.name, payload))


class NamesPod:
    """A pod with in-tree symlinks (relative, absolute, across categories), a user section of its
    own with is_default (which wins a name clash today), a second plain section holding names of
    its own (one of them also in the store), and a same-name, same-size conflict with the store."""

    def __init__(self, base: Path) -> None:
        self.comfyui = base / "ComfyUI"
        self.models = self.comfyui / "models"
        self.store = base / "store"
        self.mine = base / "mine"          # the user's is_default section
        self.extra = base / "extra"        # the user's plain section
        m = self.models
        put(m / "checkpoints/sd15_base.safetensors", b"A" * 300)
        os.symlink("sd15_base.safetensors", m / "checkpoints/sd15_link.safetensors")
        put(m / "checkpoints/x.safetensors", b"X" * 200)
        (m / "diffusion_models").mkdir()
        os.symlink("../checkpoints/x.safetensors", m / "diffusion_models/x.safetensors")
        put(m / "loras/absbase.safetensors", b"L" * 100)
        os.symlink(str(m / "loras/absbase.safetensors"), m / "loras/abs_link.safetensors")
        put(m / "loras/shared.safetensors", b"P" * 150)          # loses to mine/ today
        put(self.mine / "loras/shared.safetensors", b"M" * 150)
        put(m / "loras/c.safetensors", b"p" * 120)               # the store holds another c
        put(self.store / "loras/c.safetensors", b"s" * 120)
        put(self.extra / "vae/own.safetensors", b"E" * 90)       # only in the plain section today
        put(self.extra / "vae/v.safetensors", b"V" * 90)
        put(self.store / "vae/own.safetensors", b"S" * 90)       # another pod's own.safetensors
        put(m / "vae/pod_vae.safetensors", b"W" * 80)
        self.yaml = self.comfyui / "extra_model_paths.yaml"
        self.yaml.write_text(f"# the user's own\nextra:\n  base_path: {self.extra}\n  vae: vae\n\n"
                             f"mine:\n  base_path: {self.mine}\n  is_default: true\n  loras: loras\n")

    def args(self, *extra: str) -> list:
        return ["--comfyui", str(self.comfyui), "--target", str(self.store), *extra]

    def snap(self) -> dict:
        """Both trees: content, mode, mtime, link text (a re-made symlink has a new inode: not compared)."""
        out = {}
        for label, root in (("C", self.comfyui), ("S", self.store)):
            for rel, (kind, mode, mtime, ino, nlink, content) in snapshot_tree(root).items():
                if rel == STATE or rel.startswith(STATE + "/") or (label == "S" and rel == ""):
                    continue        # the store's own folder holds our state folder from now on
                # a re-made symlink and the YAML (written atomically) have new inodes: not compared
                keep_ino = kind != "symlink" and rel != "extra_model_paths.yaml"
                out[f"{label}:{rel}"] = (kind, mode, mtime, ino if keep_ino else None, content)
        return out


@pytest.fixture
def names_pod(tmp_path) -> NamesPod:
    return NamesPod(tmp_path)


def plan_json(pod: NamesPod, env, *extra) -> dict:
    return json.loads(run_cli(["plan", *pod.args("--format", "json", *extra)], env).stdout)


REASON = {"skip": "conflict: left in place", "rename": "conflict: stored under a .conflict-N name"}


@pytest.mark.parametrize("on_conflict", ["skip", "rename"])
@pytest.mark.slow
def test_every_name_keeps_its_bytes_but_the_declared_ones(names_pod, cli_env, on_conflict):
    pod = names_pod
    before = comfyui_loads(pod.comfyui)
    assert before[("loras", "shared.safetensors")][1].startswith(str(pod.mine))       # is_default wins today
    assert before[("vae", "own.safetensors")][1].startswith(str(pod.extra))
    snap = pod.snap()
    doc = plan_json(pod, cli_env, "--on-conflict", on_conflict)
    declared = {(c["category"], c["name"]): c for c in doc["name_changes"]}
    assert sorted(declared) == [("loras", "c.safetensors"), ("vae", "own.safetensors")]
    assert declared[("loras", "c.safetensors")]["reason"].startswith(REASON[on_conflict])
    assert declared[("vae", "own.safetensors")]["reason"].startswith("the store holds another file")
    assert declared[("vae", "own.safetensors")]["after"]["path"] == str(pod.store / "vae/own.safetensors")
    assert all(c["before"]["digest"] and c["after"]["digest"] for c in doc["name_changes"])
    relinks = sorted(a["source"].split("/models/", 1)[1] for a in doc["actions"] if a["action"] == "relink")
    assert relinks == ["checkpoints/sd15_link.safetensors", "diffusion_models/x.safetensors",
                       "loras/abs_link.safetensors"]
    table = run_cli(["plan", *pod.args("--on-conflict", on_conflict), "-v"], cli_env).stdout   # whole lines
    assert "name changes: 2 name(s) would load other bytes" in table
    warned = [ln for ln in table.splitlines() if ln.startswith("warning:") and "conflict" in ln]
    assert len(warned) == 1 and len(warned[0]) < 250, warned
    assert (" is stored as c.conflict-1.safetensors" in warned[0]) is (on_conflict == "rename")

    if on_conflict == "skip":        # the conflicting file stays where it is: exit 1
        run_leaving_conflicts(pod.args("--yes", "--on-conflict", on_conflict), cli_env)
    else:
        run_cli(["run", *pod.args("--yes", "--on-conflict", on_conflict)], cli_env)
    after = comfyui_loads(pod.comfyui)
    for key, (digest, path) in before.items():
        if key in declared:
            assert after.get(key, (None,))[0] != digest, key
        else:
            assert after.get(key, (None, "nothing"))[0] == digest, (key, path, after.get(key))
    for rel in ("checkpoints/sd15_link.safetensors", "diffusion_models/x.safetensors", "loras/abs_link.safetensors"):
        link = pod.models / rel
        assert link.is_symlink() and not os.path.isabs(os.readlink(link)) and link.resolve().is_relative_to(pod.store)
    # the user's is_default section keeps its place ahead of ours
    text = pod.yaml.read_text()
    assert text.index("comfy_migrate:") < text.index("mine:")
    assert run_cli(["verify", *pod.args("--format", "json")], cli_env).returncode == 0

    run_cli(["rollback", "--target", str(pod.store), "--yes"], cli_env)
    assert pod.snap() == snap
    assert comfyui_loads(pod.comfyui) == before


def test_verify_fails_when_a_name_loads_other_bytes(names_pod, cli_env):
    pod = names_pod
    run_leaving_conflicts(pod.args("--yes"), cli_env)
    assert json.loads(run_cli(["verify", *pod.args("--format", "json")], cli_env).stdout)["names_checked"] >= 6
    # another file of a moved name in the user's is_default folder: ComfyUI loads it first now
    put(pod.mine / "loras/absbase.safetensors", b"Z" * 100)
    assert comfyui_loads(pod.comfyui)[("loras", "absbase.safetensors")][1].startswith(str(pod.mine))
    doc = json.loads(run_cli(["verify", *pod.args("--format", "json")], cli_env, check=8).stdout)
    assert [n.split(":")[0] for n in doc["names_changed"]] == ["loras/absbase.safetensors", "loras/abs_link.safetensors"] \
        or [n.split(":")[0] for n in doc["names_changed"]] == ["loras/absbase.safetensors"]
    assert not doc["ok"]


def test_symlink_whose_file_stays_is_left_alone(names_pod, cli_env):
    pod = names_pod
    os.symlink("c.safetensors", pod.models / "loras/c_link.safetensors")     # c conflicts: it stays
    doc = plan_json(pod, cli_env)
    acts = {a["source"].split("/models/", 1)[1]: a for a in doc["actions"]}
    assert acts["loras/c_link.safetensors"]["action"] == "skip"
    # the store has no c_link: the name still loads the pod's c, which stays
    assert ("loras", "c_link.safetensors") not in {(c["category"], c["name"]) for c in doc["name_changes"]}


# --- YAML ComfyUI reads, and YAML it cannot ------------------------------------------------------

def test_plan_accepts_merge_keys(names_pod, cli_env):
    pod = names_pod
    pod.yaml.write_text(f"base: &b\n  base_path: {pod.extra}\n  vae: vae\nmine:\n  <<: *b\n  is_default: true\n")
    doc = plan_json(pod, cli_env)
    assert doc["yaml"]["changes"]


@pytest.mark.parametrize("text, words", [
    ("a: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
    ("? [a, b]\n: x\n", "unhashable key"),
    ("s:\n  ? {x: 1}\n  : y\n", "unhashable key"),
    ("s:\n  vae: v\nt: 2001-02-30\n", "ValueError"),
])
def test_plan_refuses_unreadable_yaml_in_one_line(names_pod, cli_env, text, words):
    pod = names_pod
    pod.yaml.write_text(text)
    proc = run_cli(["plan", *pod.args()], cli_env, check=3)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in proc.stderr


# --- a category folder that is a symlink to a folder beside it -----------------------------------

def test_a_symlinked_category_folder_keeps_its_category(tmp_path, cli_env):
    # models/checkpoints -> checkpoints_real: ComfyUI lists checkpoints_real's files as checkpoints.
    # Their store folder is checkpoints/ (listed in the YAML as checkpoints), not a custom-node
    # folder checkpoints_real: a rebuilt container without the link still finds every name.
    comfyui, store = tmp_path / "ComfyUI", tmp_path / "store"
    models = comfyui / "models"
    put(models / "checkpoints_real/a.safetensors", b"A" * 300)
    put(models / "checkpoints_real/sub/b.safetensors", b"B" * 200)
    os.symlink("checkpoints_real", models / "checkpoints")
    put(models / "vae/v.safetensors", b"V" * 100)
    store.mkdir()
    args = ["--comfyui", str(comfyui), "--target", str(store)]
    before_tree = snapshot_tree(comfyui)
    before = comfyui_loads(comfyui)
    assert before[("checkpoints", "sub/b.safetensors")][1].startswith(str(models / "checkpoints"))

    doc = json.loads(run_cli(["plan", *args, "--format", "json"], cli_env).stdout)
    dst = {a["source"].split("/models/", 1)[1]: a["destination"] for a in doc["actions"] if a["action"] == "move"}
    assert dst == {"checkpoints_real/a.safetensors": str(store / "checkpoints/a.safetensors"),
                   "checkpoints_real/sub/b.safetensors": str(store / "checkpoints/sub/b.safetensors"),
                   "vae/v.safetensors": str(store / "vae/v.safetensors")}
    assert doc["custom_folders"] == [] and doc["name_changes"] == []
    table = run_cli(["-v", "plan", *args], cli_env).stdout
    assert "custom-node folder" not in table
    assert "ComfyUI's checkpoints folder; the files of checkpoints_real/ go to the store's checkpoints/" in table

    run_cli(["run", *args, "--yes"], cli_env)
    assert comfyui_loads(comfyui) == {k: (d, p.replace(str(models / "checkpoints"), str(store / "checkpoints"))
                                          .replace(str(models / "vae"), str(store / "vae")))
                                      for k, (d, p) in before.items()}
    assert "  checkpoints: checkpoints\n" in (comfyui / "extra_model_paths.yaml").read_text()
    run_cli(["verify", *args], cli_env)
    # a container rebuilt from its image (an empty models folder, no link) with the YAML: every name loads
    rebuilt = tmp_path / "rebuilt"
    (rebuilt / "models").mkdir(parents=True)
    shutil.copy(comfyui / "extra_model_paths.yaml", rebuilt / "extra_model_paths.yaml")
    assert {k: d for k, (d, _) in comfyui_loads(rebuilt).items()} == {k: d for k, (d, _) in before.items()}

    run_cli(["rollback", "--target", str(store), "--yes"], cli_env)
    assert snapshot_tree(comfyui) == before_tree
    assert comfyui_loads(comfyui) == before
    assert [p.name for p in store.iterdir()] == [".comfy-migrate"]


@pytest.mark.parametrize("links, expect", [
    ({"checkpoints": "real"}, {"real": "checkpoints"}),
    ({"unet": "real"}, {"real": "diffusion_models"}),                   # a legacy name: its category
    ({"checkpoints": "real", "loras": "real"}, {}),                     # two categories: keeps its name
    ({"checkpoints": "real", "ckpt_alias_not_a_category": "real"}, {"real": "checkpoints"}),
    ({"unet": "diffusion_models"}, {}),                                 # a category folder itself
    ({"checkpoints": "missing"}, {}),                                   # dangling
    ({"checkpoints": "../outside"}, {}),                                # not beside it: not scanned here
])
def test_linked_categories(tmp_path, links, expect):
    from migrate.disk.scan import linked_categories
    root = tmp_path / "models"
    for d in ("real", "diffusion_models"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (tmp_path / "outside").mkdir()
    for name, to in links.items():
        os.symlink(to, root / name)
    assert linked_categories(str(root)) == expect


def test_a_symlinked_model_file_directly_in_models_is_left_as_it_is(tmp_path, cli_env):
    # A symlink beside the category folders that is no category (a file link) is just a symlink.
    models = tmp_path / "ComfyUI" / "models"
    put(models / "vae/v.safetensors", b"V" * 100)
    os.symlink("vae/v.safetensors", models / "v.safetensors")
    out = run_cli(["-v", "scan", "--source", models], cli_env).stdout + \
        run_cli(["-v", "plan", "--source", models, "--target", tmp_path / "store"], cli_env).stdout
    assert "symlink to vae/v.safetensors (left as it is)" in out and "ComfyUI's" not in out


# --- a store folder that is a symlink: run writes through it (preflight.py), ComfyUI follows it ---

STORE_LINKS = {
    # how the store is laid out -> (the folder behind the link, what it holds: a file already in
    # the store, the file run places there)
    "folder": ("elsewhere/loras", "old.safetensors", "a.safetensors"),     # store/loras -> elsewhere/loras
    "root": ("real", "loras/old.safetensors", "loras/a.safetensors"),      # --target store -> real
    "deep": ("elsewhere/wan", "old.safetensors", "w.safetensors"),         # store/loras/wan -> elsewhere/wan
    "inside": ("store/loras_big", "old.safetensors", "a.safetensors"),     # store/loras -> loras_big
}


class LinkedStorePod:
    """A pod moving to a store with a symlinked folder (STORE_LINKS), which holds a file already."""

    def __init__(self, base: Path, how: str) -> None:
        self.comfyui, self.store = base / "ComfyUI", base / "store"
        behind, old, placed = STORE_LINKS[how]
        self.behind = base / behind
        self.placed = self.behind / placed          # where run places a file of the pod
        m = self.comfyui / "models"
        put(m / "loras/a.safetensors", b"A" * 100)
        put(m / "loras/wan/w.safetensors", b"W" * 110)
        put(m / "vae/v.safetensors", b"V" * 90)
        put(self.behind / old, b"O" * 80)
        if how == "root":
            os.symlink(self.behind, self.store)
        elif how == "folder":
            self.store.mkdir()
            os.symlink(self.behind, self.store / "loras")
        elif how == "inside":
            os.symlink("loras_big", self.store / "loras")
        else:
            (self.store / "loras").mkdir(parents=True)
            os.symlink(self.behind, self.store / "loras/wan")

    def args(self, *extra: str) -> list:
        return ["--comfyui", str(self.comfyui), "--target", str(self.store), *extra]

    def state(self) -> dict:
        """The pod, the store and the folder behind the link, our state folders left out (and the
        YAML's inode: written atomically by run and rollback)."""
        out = {}
        for root in (self.comfyui, self.store, self.behind):
            for rel, (kind, mode, mtime, ino, nlink, content) in snapshot_tree(root).items():
                if rel.split("/")[0] == STATE or (rel == "" and root != self.comfyui
                                                       and os.path.realpath(root) == os.path.realpath(self.store)):
                    continue        # the store's own folder holds our state folder from now on
                out[f"{root}:{rel}"] = (kind, mode, mtime, None if rel == "extra_model_paths.yaml" else ino,
                                        nlink, content)
        return out


@pytest.mark.parametrize("how", sorted(STORE_LINKS))
@pytest.mark.slow
def test_a_symlinked_store_folder_keeps_every_name(tmp_path, cli_env, how):
    pod = LinkedStorePod(tmp_path, how)
    before = comfyui_loads(pod.comfyui)
    assert sorted(before) == [("loras", "a.safetensors"), ("loras", "wan/w.safetensors"), ("vae", "v.safetensors")]
    state = pod.state()
    doc = plan_json(pod, cli_env)
    assert doc["name_changes"] == []
    assert {a["action"] for a in doc["actions"]} == {"move"}

    run_cli(["run", *pod.args("--yes")], cli_env)
    assert pod.placed.is_file() and not (pod.comfyui / "models/loras/a.safetensors").exists()
    after = comfyui_loads(pod.comfyui)
    assert {k: after.get(k, (None,))[0] for k in before} == {k: d for k, (d, _) in before.items()}
    # the run logged every name it answers for: verify checks each (the file behind the link too)
    doc = json.loads(run_cli(["verify", *pod.args("--format", "json")], cli_env).stdout)
    assert doc["names_checked"] == 3 and doc["ok"]

    run_cli(["rollback", *pod.args("--dry-run")], cli_env)
    run_cli(["rollback", *pod.args("--yes")], cli_env)
    assert pod.state() == state
    assert comfyui_loads(pod.comfyui) == before


@pytest.mark.parametrize("how", sorted(STORE_LINKS))
def test_verify_fails_when_the_file_behind_a_symlinked_store_folder_is_damaged(tmp_path, cli_env, how):
    pod = LinkedStorePod(tmp_path, how)
    run_cli(["run", *pod.args("--yes")], cli_env)
    data = bytearray(pod.placed.read_bytes())
    data[-1] ^= 0xFF                                      # same size: only the digest sees it
    pod.placed.write_bytes(bytes(data))
    doc = json.loads(run_cli(["verify", *pod.args("--format", "json")], cli_env, check=8).stdout)
    name = "loras/" + ("wan/w.safetensors" if how == "deep" else "a.safetensors")
    assert doc["names_checked"] == 3 and not doc["ok"]
    assert [n.split(":")[0] for n in doc["names_changed"]] == [name]


def test_a_second_run_sees_what_is_behind_a_symlinked_store_folder(tmp_path, cli_env):
    pod = LinkedStorePod(tmp_path, "folder")
    run_cli(["run", *pod.args("--yes")], cli_env)
    put(pod.comfyui / "models/loras/b.safetensors", b"B" * 70)
    put(pod.comfyui / "models/loras/old.safetensors", b"O" * 80)     # the stored file's very bytes
    before = comfyui_loads(pod.comfyui)
    # the store's section (searched first: is_default) lists loras now: old loads from behind the link
    assert before[("loras", "old.safetensors")][1] == str(pod.store / "loras/old.safetensors")
    doc = plan_json(pod, cli_env)
    assert doc["name_changes"] == []
    acts = {a["source"].split("/models/", 1)[1]: a["action"] for a in doc["actions"]}
    assert acts == {"loras/b.safetensors": "move", "loras/old.safetensors": "already-there"}
    run_cli(["run", *pod.args("--yes")], cli_env)
    after = comfyui_loads(pod.comfyui)
    assert {k: after.get(k, (None,))[0] for k in before} == {k: d for k, (d, _) in before.items()}
    doc = json.loads(run_cli(["verify", *pod.args("--format", "json")], cli_env).stdout)
    # the second run answers for b only: old loaded the store's file before it, as after
    assert doc["names_checked"] == 4 and doc["ok"]


def test_the_resolver_lists_what_is_behind_a_symlinked_store_folder():
    # store/loras -> /big/loras, entered (facts.through_links: its files listed under the store's
    # name, an alias): before the plan, as after, its names load from there; a relative link behind
    # it is read from the real folder; the real path (a YAML naming it, a link text) meets it too.
    from migrate.core.names import Node, View, loads
    tree = {"/s/loras": Node("link", 0, None, "/big/loras"),
            "/s/loras/old.safetensors": Node("file", 8, "d", None),
            "/s/loras/rel.safetensors": Node("link", 0, None, "old.safetensors"),
            "/m/loras/abs.safetensors": Node("link", 0, None, "/big/loras/old.safetensors")}
    view = View(tree, ["/m", "/s"], [("/big/loras", "/s/loras")])
    got = loads({"loras": ["/m/loras", "/s/loras"]}, view)
    assert got == {("loras", n): "/s/loras/old.safetensors" for n in ("old.safetensors", "rel.safetensors",
                                                                      "abs.safetensors")}
    assert loads({"loras": ["/big/loras"]}, view) == {("loras", n): "/s/loras/old.safetensors"
                                                      for n in ("old.safetensors", "rel.safetensors")}
    after = view.replace({"/s/loras/a.safetensors": Node("file", 9, "e", None)})
    assert loads({"loras": ["/s/loras"]}, after)[("loras", "a.safetensors")] == "/s/loras/a.safetensors"


def test_the_resolver_walks_a_symlinked_folder_inside_the_store():
    # store/loras -> loras_big (not entered: its files are listed under their own name): ComfyUI's
    # walk follows the link; a file run places at store/loras/ lands in loras_big (plan._placed_at).
    from migrate.core.names import Node, View, loads
    from migrate.core.plan import _placed_at
    view = View({"/s/loras": Node("link", 0, None, "loras_big"),
                 "/s/loras_big/old.safetensors": Node("file", 8, "d", None)}, ["/s"])
    assert loads({"loras": ["/s/loras"]}, view) == {("loras", "old.safetensors"): "/s/loras_big/old.safetensors"}
    assert _placed_at("/s/loras/a.safetensors", view) == "/s/loras_big/a.safetensors"


# --- issue 15: a large YAML is read once, not once per use -----------------------------------------

COUNT_PARSES = """
import atexit, sys
import yaml.composer
out = sys.argv.pop(1)
n = [0]
single = yaml.composer.Composer.get_single_node
def counted(self):
    n[0] += 1
    return single(self)
yaml.composer.Composer.get_single_node = counted       # every PyYAML parse of a document goes through it
atexit.register(lambda: open(out, "w").write(str(n[0])))
from migrate.cli import main
sys.argv[0] = "comfy-migrate"
main()
"""


def parses_of(args, env, tmp_path, check=0) -> int:
    """How many times the real CLI, run as a process with ARGS, parsed a YAML document."""
    import subprocess
    import sys
    out = tmp_path / "parses.txt"
    proc = subprocess.run([sys.executable, "-c", COUNT_PARSES, str(out), *map(str, args)], env=env,
                          cwd=env["HOME"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == check, proc.stderr
    return int(out.read_text())


def test_plan_and_run_parse_the_yaml_once_and_what_they_write_once(names_pod, cli_env, tmp_path):
    # issue 15: a 100,000-line YAML took 100 s to plan; the plan parsed it ~9 times (the same text
    # under several paths, a second composer pass to find the is_default line). Now: the user's
    # YAML once, and the YAML we would write once (to check ComfyUI reads it as we mean), however
    # many sections (the count must not grow with the file).
    pod = names_pod
    sections = "".join(f"# section {i}\nsec{i}:\n  base_path: {pod.comfyui}/missing{i}\n  loras: loras\n"
                       f"  vae: vae\n" for i in range(300))
    pod.yaml.write_text(pod.yaml.read_text() + sections)
    assert parses_of(["plan", *pod.args()], cli_env, tmp_path) == 2
    assert parses_of(["run", *pod.args("--yes")], cli_env, tmp_path, check=1) == 2      # 1: the conflict stays
    # next time our section is replaced where it stands: the text without it is read too (the
    # merged text is the file as it is here, read already)
    assert parses_of(["plan", *pod.args()], cli_env, tmp_path) <= 3
