"""The plan predicts the store's name rules and allocation (issue 20): case folding, characters the
store refuses, name length in the store's own unit, allocation in its block size.

Pure rules and whole plans in memory (hypothesis where the space is large), then the real CLI on a
real exFAT store (exfat-fuse on a loop image with 1 MiB clusters; root only, skipped otherwise).
"""
from __future__ import annotations

import json
import os
import posixpath
import shutil
import subprocess
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from test_plan import OTHER_FS, SRC, TGT, plan_of, rec

from conftest import as_model, run_cli, snapshot_tree
from migrate.core import storerules
from migrate.core.model import UNPROBED, ActionKind, Method, OnConflict, Policy
from migrate.core.storerules import UTF16, allocation, fold, length, refusal, shorten

# What the probe measured on exfat-fuse with `mkfs.exfat -c 1M` (fsops.probe_fs).
EXFAT = UNPROBED._replace(fstype="fuseblk", hardlink=False, symlink=False, mtime_step_ns=10 ** 9,
                          case_sensitive=False, forbidden=storerules.WINDOWS_CHARS + storerules.CONTROL,
                          name_unit=UTF16, name_max=255, block=1 << 20)
EXT4 = UNPROBED._replace(fstype="ext4", block=4096)


# --- the pure rules ----------------------------------------------------------------------------------

def case_variant(s: str, flips) -> str:
    """`s` with some characters in their other case (where that case is one character), as a user
    typing the same name on a case-insensitive volume might."""
    out = []
    for c, f in zip(s, flips):
        alt = c.upper() if c.islower() else c.lower()
        out.append(alt if f and len(alt) == 1 else c)
    return "".join(out)


@given(st.text(min_size=1, max_size=40), st.lists(st.booleans(), min_size=40, max_size=40))
def test_every_case_variant_of_a_name_folds_to_one_key(name, flips):
    assert fold(case_variant(name, flips)) == fold(name)


@given(st.text(min_size=1, max_size=40))
def test_composed_and_decomposed_forms_fold_to_one_key(name):
    assert fold(unicodedata.normalize("NFD", name)) == fold(unicodedata.normalize("NFC", name))


def test_fold_joins_what_exfat_joins_and_keeps_different_names_apart():
    # measured on exfat-fuse: i/I, é/É, Ω/ω are one name there
    assert fold("Style.safetensors") == fold("style.safetensors") == fold("STYLE.SAFETENSORS")
    assert fold("é") == fold("É") and fold("Ω") == fold("ω") and fold("ı") == fold("I")
    assert fold("style_a.pt") != fold("style_b.pt")


@given(st.text(min_size=0, max_size=300))
def test_utf16_length_counts_code_units(name):
    astral = sum(1 for c in name if ord(c) > 0xFFFF)
    assert length(name, UTF16) == len(name) + astral
    assert length(name, UTF16) <= length(name, "bytes")       # a UTF-8 byte per unit at least


def test_a_112_character_cjk_name_fits_exfat_but_not_ext4():
    name = "字" * 100 + ".safetensors"
    assert length(name, UTF16) == 112 and refusal(name, EXFAT) is None
    assert "312 bytes" in refusal(name, EXT4)
    assert "UTF-16" in refusal("字" * 244 + ".safetensors", EXFAT)       # 256 units


@given(st.text(min_size=1, max_size=300), st.integers(min_value=1, max_value=9),
       st.sampled_from([EXFAT, EXT4]))
def test_a_shortened_name_fits_the_store_in_its_unit(stem, n, fs):
    tail = f".conflict-{n}.safetensors"
    name = shorten(stem, tail, fs)
    assert length(name, fs.name_unit) <= fs.name_max and name.endswith(tail)
    assert stem.startswith(name[:-len(tail)]) or name == "x" + tail


@pytest.mark.parametrize("name, why", [
    ("what?.safetensors", "'?'"), ('say "hi".pt', "'\"'"), ("a:b.pt", "':'"), ("a|b.pt", "'|'"),
    ("a<b>.pt", "'<' '>'"), ("back\\slash.pt", "'\\\\'"), ("tab\there.pt", "'\\t'"), ("star*.pt", "'*'"),
])
def test_characters_the_store_refuses_are_named(name, why):
    assert why in refusal(name, EXFAT)
    assert refusal(name, EXT4) is None


def test_a_trailing_dot_is_refused_where_the_probe_saw_it_dropped():
    kernel_exfat = EXFAT._replace(trailing=".")
    assert "ends with a dot" in refusal("model.", kernel_exfat)
    assert refusal("model.", EXFAT) is None


@given(st.integers(min_value=0, max_value=1 << 40), st.sampled_from([512, 4096, 1 << 20, 32 << 20]))
def test_allocation_is_whole_blocks_at_least_the_size(size, block):
    got = allocation(size, block)
    assert got % block == 0 and size <= got < size + block
    assert allocation(size, 0) == size


# --- whole plans ---------------------------------------------------------------------------------------

def kinds(plan):
    return {a.rel: (a.kind.value, storerules.stay_kind(a) if a.kind is ActionKind.CONFLICT else "",
                    a.dst[len(TGT) + 1:] if a.dst and a.method is not Method.NONE else None)
            for a in plan.actions}


def test_a_pair_that_folds_together_stays_on_the_pod_both():
    plan = plan_of(rec("loras/Style.safetensors", "d1"), rec("loras/style.safetensors", "d2"),
                   rec("loras/other.safetensors", "d3"), probe=OTHER_FS, target_fs=EXFAT)
    assert kinds(plan) == {"loras/Style.safetensors": ("conflict", "case-clash", None),
                           "loras/style.safetensors": ("conflict", "case-clash", None),
                           "loras/other.safetensors": ("move", "", "loras/other.safetensors")}
    why = {a.rel: a.reason for a in plan.actions}
    assert "one name with 'style.safetensors'" in why["loras/Style.safetensors"]
    assert "one name with 'Style.safetensors'" in why["loras/style.safetensors"]
    # where case counts, nothing changes
    assert {k: v[0] for k, v in kinds(plan_of(rec("loras/Style.safetensors", "d1"), rec("loras/style.safetensors", "d2"),
                                              probe=OTHER_FS, target_fs=EXT4)).items()} == \
        {"loras/Style.safetensors": "move", "loras/style.safetensors": "move"}


def test_with_rename_the_first_keeps_the_name_and_the_other_gets_one_that_does_not_fold_onto_it():
    plan = plan_of(rec("loras/Style.safetensors", "d1"), rec("loras/style.safetensors", "d2"),
                   probe=OTHER_FS, target_fs=EXFAT, policy=Policy(on_conflict=OnConflict.RENAME))
    got = kinds(plan)
    assert got["loras/Style.safetensors"] == ("move", "", "loras/Style.safetensors")
    assert got["loras/style.safetensors"] == ("move", "", "loras/style.conflict-1.safetensors")
    declared = plan_of(rec("loras/Style.safetensors", "d1"), rec("loras/style.safetensors", "d2"), probe=OTHER_FS,
                       target_fs=EXFAT, policy=Policy(on_conflict=OnConflict.RENAME),
                       yaml_path="/pod/ComfyUI/extra_model_paths.yaml", yaml_before="")
    assert [(c.name, ".conflict-N" in c.reason) for c in declared.name_changes] == [("style.safetensors", True)]
    assert any(w.startswith("renamed (conflict): ") for w in declared.warnings)


def test_a_name_folding_onto_a_stored_file_is_a_conflict_and_its_name_change_is_declared():
    store = [rec("loras/STYLE.safetensors", "d9", root=TGT)]
    plan = plan_of(rec("loras/style.safetensors", "d1"), target=store, probe=OTHER_FS, target_fs=EXFAT,
                   yaml_path="/pod/ComfyUI/extra_model_paths.yaml", yaml_before="")
    assert kinds(plan)["loras/style.safetensors"] == ("conflict", "case-clash", None)
    # ComfyUI's lookup of loras/style.safetensors finds STYLE's bytes in the store, searched first
    assert [(c.name, c.after) for c in plan.name_changes] == [("style.safetensors", f"{TGT}/loras/STYLE.safetensors")]


def test_a_category_folder_spelled_otherwise_in_the_store_is_the_same_folder():
    """ComfyUI's names are relative to the category folder: `Loras/x` in the store is `loras/x`."""
    store = [rec("Loras/style.safetensors", "d1", root=TGT)]
    plan = plan_of(rec("loras/style.safetensors", "d1"), rec("loras/new.safetensors", "d2"), target=store,
                   probe=OTHER_FS, target_fs=EXFAT)
    assert kinds(plan)["loras/style.safetensors"] == ("already-there", "", None)
    assert [a.dst for a in plan.actions if a.rel == "loras/style.safetensors"] == [f"{TGT}/Loras/style.safetensors"]
    assert kinds(plan)["loras/new.safetensors"] == ("move", "", "loras/new.safetensors")


def test_a_folder_below_the_category_spelled_otherwise_keeps_its_files_on_the_pod_even_with_rename():
    plan = plan_of(rec("loras/Wan/a.safetensors", "d1"), rec("loras/wan/b.safetensors", "d2"),
                   probe=OTHER_FS, target_fs=EXFAT, policy=Policy(on_conflict=OnConflict.RENAME))
    assert {k: v[:2] for k, v in kinds(plan).items()} == {"loras/Wan/a.safetensors": ("conflict", "case-clash"),
                                                         "loras/wan/b.safetensors": ("conflict", "case-clash")}
    assert "'wan/'" in plan.actions[0].reason


def test_names_the_store_refuses_stay_and_the_rest_moves():
    plan = plan_of(rec("loras/what?.safetensors", "d1"), rec("loras/" + "字" * 100 + ".safetensors", "d2"),
                   rec("loras/a:b/c.safetensors", "d3"), probe=OTHER_FS, target_fs=EXFAT)
    got = kinds(plan)
    assert got["loras/what?.safetensors"][:2] == ("conflict", "name-refused")
    assert got["loras/a:b/c.safetensors"][:2] == ("conflict", "name-refused")
    assert got["loras/" + "字" * 100 + ".safetensors"][0] == "move"
    assert "'a:b'" in [a for a in plan.actions if a.rel == "loras/a:b/c.safetensors"][0].reason


def test_fits_counts_allocation_and_a_reserve_not_bytes():
    small = [rec(f"loras/l{i}.safetensors", f"d{i}", size=1000) for i in range(20)]
    plan = plan_of(*small, probe=OTHER_FS, target_fs=EXFAT, free_bytes=30 << 20)
    assert plan.bytes_to_copy == 20_000
    assert plan.space_needed == (20 + 1 + 1) * (1 << 20) + plan.reserve_bytes     # files, loras/, the store
    assert plan.reserve_bytes >= 12 << 20 and not plan.fits
    assert plan_of(*small, probe=OTHER_FS, target_fs=EXFAT, free_bytes=plan.space_needed).fits
    # ext4: 4 KiB blocks, the same 20 files need well under a MiB
    assert plan_of(*small, probe=OTHER_FS, target_fs=EXT4, free_bytes=1 << 20).fits


NAMES = ["a.pt", "A.pt", "b.pt", "B.PT", "é.pt", "É.pt", "x?.pt", "s/a.pt", "S/b.pt", "字" * 130 + ".pt"]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(pod=st.dictionaries(st.sampled_from(NAMES), st.sampled_from(["d1", "d2", "d3"]), min_size=1),
       store=st.dictionaries(st.sampled_from(NAMES), st.sampled_from(["d1", "d4"])),
       rename=st.booleans())
def test_on_a_case_insensitive_store_no_two_names_of_the_plan_are_one_name_there(pod, store, rename):
    """Whatever the pod and the store hold: every name the plan places is one the store can hold,
    no two placed names fold together, none folds onto a stored file of another spelling, and a
    name that stays is said to (the run's exit 1)."""
    store = {n: d for n, d in store.items() if refusal(n.split("/")[-1], EXFAT) is None}
    one = {}                                  # the store holds one spelling per folded name
    for n in sorted(store):
        if not any(fold(q) == fold(r) for r in prefixes(f"loras/{n}") for m in one for q in prefixes(f"loras/{m}")
                   if q.count("/") == r.count("/") and q != r):
            one[n] = store[n]
    store = one
    policy = Policy(on_conflict=OnConflict.RENAME if rename else OnConflict.SKIP)
    plan = plan_of(*[rec(f"loras/{n}", d) for n, d in sorted(pod.items())],
                   target=[rec(f"loras/{n}", d, root=TGT) for n, d in sorted(store.items())],
                   probe=OTHER_FS, target_fs=EXFAT, policy=policy,
                   yaml_path="/pod/ComfyUI/extra_model_paths.yaml", yaml_before="")
    placed = [a.dst[len(TGT) + 1:] for a in plan.actions if a.method is not Method.NONE]
    stored = {fold(f"loras/{n}"): f"loras/{n}" for n in store}
    spelled = {fold(q): q for n in store for q in prefixes(f"loras/{n}")}
    assert len({fold(p) for p in placed}) == len(placed)
    for p in placed:
        assert storerules.refused_path(p, EXFAT) is None
        assert fold(p) not in stored
        for q in prefixes(p):                 # no folder on the way spelled otherwise in the store
            assert spelled.get(fold(q), q) == q
    for a in plan.actions:
        assert a.kind in (ActionKind.MOVE, ActionKind.SAME_CONTENT, ActionKind.ALREADY_THERE, ActionKind.CONFLICT)
        if a.kind is ActionKind.ALREADY_THERE:
            assert a.dst[len(TGT) + 1:] in stored.values() and a.rel == a.dst[len(TGT) + 1:]
        if a.kind is ActionKind.CONFLICT:
            assert a.reason
    # No name loads other bytes afterwards, but where the store already held another file of
    # that name (in any spelling), as for any conflict, and said so.
    kept = {a.source for a in plan.actions if a.kind is ActionKind.CONFLICT}
    for c in plan.name_changes:
        assert c.before in kept or rename, c
        if not rename:
            assert fold(c.category + "/" + c.name) in stored, c


def prefixes(rel):
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


# --- the real CLI on a real exFAT store ----------------------------------------------------------------

def sh(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture
def exfat(tmp_path):
    """A folder on a fresh exFAT filesystem with 1 MiB clusters (exfat-fuse on a loop image), `size`
    MiB; root, mkfs.exfat, mount.exfat-fuse and /dev/fuse needed (skipped otherwise)."""
    undo = []

    def make(size_mb: int) -> Path:
        if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
            pytest.skip("needs root and /dev/fuse to mount an exFAT image")
        if not (shutil.which("mkfs.exfat") and shutil.which("mount.exfat-fuse") and shutil.which("losetup")):
            pytest.skip("needs mkfs.exfat (exfatprogs) and mount.exfat-fuse (exfat-fuse)")
        img, mnt = tmp_path / f"exfat{len(undo)}.img", tmp_path / f"exfat{len(undo)}"
        mnt.mkdir()
        with open(img, "wb") as f:
            f.truncate(size_mb << 20)
        if sh("mkfs.exfat", "-c", "1M", str(img)).returncode:
            pytest.skip("mkfs.exfat -c 1M refused here")
        dev = sh("losetup", "-f", "--show", str(img)).stdout.strip()
        if not dev:
            pytest.skip("no free loop device")
        undo.append(["losetup", "-d", dev])
        if sh("mount.exfat-fuse", dev, str(mnt)).returncode:
            pytest.skip("mount.exfat-fuse refused here")
        undo.append(["umount", str(mnt)])
        return mnt
    yield make
    for cmd in reversed(undo):
        if sh(*cmd).returncode and cmd[0] == "umount":
            sh("umount", "-l", cmd[1])


def pod_state(root: Path) -> dict:
    """The pod as a rollback must give it back (the YAML is rewritten atomically: a new inode)."""
    return {k: v[:3] + v[4:] if k.endswith("extra_model_paths.yaml") else v for k, v in snapshot_tree(root).items()}


def model(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(as_model(path.name, payload))


def small_pod(root: Path) -> Path:
    comfy = root / "ComfyUI"
    m = comfy / "models"
    model(m / "loras" / "Style.safetensors", b"Style's bytes" * 100)
    model(m / "loras" / "style.safetensors", b"style's bytes" * 100)
    model(m / "loras" / "what?.safetensors", b"refused" * 100)
    model(m / "loras" / ("字" * 70 + ".safetensors"), b"cjk" * 100)       # 222 bytes, 82 UTF-16 units
    model(m / "checkpoints" / "ok.safetensors", b"ok" * 1000)
    (comfy / "extra_model_paths.yaml").write_text("# mine\n")
    return comfy


def test_case_pairs_and_refused_names_stay_on_the_pod_and_every_name_loads_its_own_bytes(tmp_path, cli_env, exfat):
    store_fs = exfat(48)
    comfy = small_pod(tmp_path / "pod")
    target = store_fs / "models"
    args = ["--comfyui", str(comfy), "--target", str(target)]
    before = pod_state(tmp_path / "pod")
    doc = json.loads(run_cli(["plan", *args, "--format", "json"], cli_env).stdout)
    how = {posixpath.relpath(a["source"], str(comfy / "models")): (a["action"], a["reason"]) for a in doc["actions"]}
    assert how["loras/Style.safetensors"][0] == how["loras/style.safetensors"][0] == "conflict"
    assert "case-insensitive" in how["loras/style.safetensors"][1]
    assert how["loras/what?.safetensors"][0] == "conflict" and "'?'" in how["loras/what?.safetensors"][1]
    assert how["loras/" + "字" * 70 + ".safetensors"][0] == "move"
    assert doc["totals"]["stays"] == {"conflict": 0, "case-clash": 2, "name-refused": 1, "hidden-hardlink": 0}
    assert doc["target_filesystem"]["name_unit"] == "utf16" and doc["target_filesystem"]["block_bytes"] == 1 << 20
    assert doc["name_changes"] == []
    p = run_cli(["run", *args, "--yes", "--format", "json"], cli_env, check=1)
    out = json.loads(p.stdout)
    assert out["problems"] == [] and sorted(s["why"] for s in out["stayed"]) == ["case-clash", "case-clash", "name-refused"]
    assert sorted(os.listdir(target / "loras")) == ["字" * 70 + ".safetensors"]
    run_cli(["verify", *args], cli_env)          # every name loads the bytes it loaded before
    run_cli(["rollback", "--target", str(target), "--yes"], cli_env)
    assert pod_state(tmp_path / "pod") == before


def test_a_pod_whose_bytes_fit_but_whose_allocation_does_not_is_refused_with_exit_4(tmp_path, cli_env, exfat):
    store_fs = exfat(24)
    comfy = tmp_path / "pod" / "ComfyUI"
    for i in range(30):          # 30 files of 2 KB: 60 KB of bytes, 30 MiB of 1 MiB clusters
        model(comfy / "models" / "loras" / f"l{i:02}.safetensors", bytes([i]) * 2000)
    (comfy / "extra_model_paths.yaml").write_text("# mine\n")
    target = store_fs / "models"
    args = ["--comfyui", str(comfy), "--target", str(target)]
    free = os.statvfs(store_fs).f_bavail * os.statvfs(store_fs).f_frsize
    assert 60_000 < free < 30 << 20
    before = pod_state(tmp_path / "pod")
    doc = json.loads(run_cli(["plan", *args, "--format", "json"], cli_env, check=4).stdout)
    assert doc["totals"]["store_space_needed"] > free
    p = run_cli(["run", *args, "--yes"], cli_env, check=4)
    assert "allocation unit" in p.stderr
    assert pod_state(tmp_path / "pod") == before
    assert not os.path.exists(target / "loras")


def test_a_112_character_cjk_name_moves_within_an_exfat_volume(tmp_path, cli_env, exfat):
    """exFAT counts UTF-16 units (112 here), not UTF-8 bytes (312): the name is no reason to refuse."""
    volume = exfat(32)
    comfy = volume / "pod" / "ComfyUI"
    name = "字" * 100 + ".safetensors"
    model(comfy / "models" / "loras" / name, b"cjk" * 1000)
    model(comfy / "models" / "loras" / "plain.safetensors", b"plain" * 1000)
    (comfy / "extra_model_paths.yaml").write_text("# mine\n")
    target = volume / "models"
    args = ["--comfyui", str(comfy), "--target", str(target)]
    before = pod_state(volume / "pod")
    run_cli(["run", *args, "--yes"], cli_env)
    assert sorted(os.listdir(target / "loras")) == sorted([name, "plain.safetensors"])
    run_cli(["verify", *args], cli_env)
    run_cli(["rollback", "--target", str(target), "--yes"], cli_env)
    assert pod_state(volume / "pod") == before


def test_the_probe_finds_the_rules_of_a_posix_filesystem(tmp_path):
    from migrate.disk.fsops import probe_fs
    fs = probe_fs(str(tmp_path))
    assert (fs.forbidden, fs.trailing, fs.name_unit) == ("", "", "bytes")
    assert fs.name_max == os.statvfs(tmp_path).f_namemax and fs.block >= os.statvfs(tmp_path).f_frsize
    assert os.listdir(tmp_path) == []          # its scratch names are gone


def test_the_probe_finds_the_rules_of_exfat(exfat):
    from migrate.disk.fsops import probe_fs
    volume = exfat(16)
    fs = probe_fs(str(volume))
    assert not fs.case_sensitive and set(storerules.WINDOWS_CHARS) <= set(fs.forbidden) and "\x01" in fs.forbidden
    assert (fs.name_unit, fs.name_max, fs.block) == (UTF16, 255, 1 << 20)
    assert os.listdir(volume) == []


def test_rules_known_by_type_are_the_cautious_ones():
    for fstype in ("exfat", "vfat", "ntfs3"):
        rules = storerules.known_rules(fstype)
        fs = UNPROBED._replace(fstype=fstype, **rules)
        assert not fs.case_sensitive and refusal("a?b.pt", fs) and refusal("b.", fs)
        assert refusal("字" * 200 + ".pt", fs) is None
    assert storerules.known_rules("ext4") == {} and storerules.known_rules("fuseblk") == {}
