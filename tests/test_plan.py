"""build_plan is pure: hand-made scans in, a whole Plan compared with the expected one out (no disk)."""
from __future__ import annotations

import itertools
import random
from typing import Optional

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from migrate.core import comfy
from migrate.core.errors import BadInput
from migrate.core.model import (
    Action, ActionKind, FileRecord, Method, Mode, OnConflict, PathFacts, Plan, Policy, Probe, Removal, ScanResult,
    Status,
)
from migrate.core.plan import build_plan, check_roots

SRC = "/pod/ComfyUI/models"
SRC2 = "/other/models"
TGT = "/store"
_ino = itertools.count(1000)


def rec(rel: str, digest: Optional[str] = "d1", root: str = SRC, status: Status = Status.MIGRATE,
        size: int = 10, dev: int = 1, ino: Optional[int] = None, detail: str = "") -> FileRecord:
    """A FileRecord as scan_tree + hash_records would make it."""
    folder = rel.split("/", 1)[0] if "/" in rel else ""
    category, custom = comfy.category_of(folder) if folder else (None, False)
    return FileRecord(root=root, rel=rel, folder=folder, category=category, custom=custom, status=status,
                      size=size, mtime_ns=1, mode=0o644, dev=dev, ino=next(_ino) if ino is None else ino,
                      digest=digest if status is Status.MIGRATE else None, detail=detail)


def scan(*records: FileRecord, root: str = SRC) -> ScanResult:
    return ScanResult(root=root, records=tuple(records))


SAME_FS = Probe(SRC, hardlink=True, rename=True)
RENAME_ONLY = Probe(SRC, hardlink=False, rename=True, detail="hardlink refused: EPERM")
OTHER_FS = Probe(SRC, hardlink=False, rename=False, detail="hardlink refused: EXDEV")


def plan_of(*records: FileRecord, target=(), policy=Policy(), probe=SAME_FS, target_hardlinks=True, **kw):
    return build_plan([scan(*records)], scan(*target, root=TGT) if target else None, TGT, policy, [probe],
                      target_hardlinks, **kw)


def brief(plan):
    """Each action as (kind, rel, dst relative to the target, method, removal, stored, link_back)."""
    def rel_t(p):
        return p[len(TGT) + 1:] if p else None
    return [(a.kind.value, a.rel, rel_t(a.dst), a.method.value, a.removal.value, rel_t(a.stored), a.link_back)
            for a in plan.actions]


# --- each outcome ------------------------------------------------------------------------------------

def test_move_by_hardlink_on_one_filesystem_whole_action():
    r = rec("loras/a.safetensors", "d1", size=123)
    plan = plan_of(r)
    assert plan.actions == (Action(
        ActionKind.MOVE, root=SRC, rel="loras/a.safetensors", category="loras", size=123, digest="d1",
        dst=f"{TGT}/loras/a.safetensors", method=Method.HARDLINK, removal=Removal.UNLINK, dev=1, ino=r.ino,
        mode=0o644, mtime_ns=1, fallbacks=(Method.COPY,)),)
    assert plan.bytes_to_copy == 0
    assert plan.has_work
    assert plan.target_categories == ("loras",)


@pytest.mark.parametrize("probe, method, removal", [
    (SAME_FS, Method.HARDLINK, Removal.UNLINK),
    (RENAME_ONLY, Method.RENAME, Removal.RENAMED),
    (OTHER_FS, Method.COPY, Removal.QUARANTINE),      # across filesystems: copy + verify, then quarantine
])
def test_move_method_follows_what_the_probe_found(probe, method, removal):
    plan = plan_of(rec("vae/v.pt", size=7), probe=probe)
    assert brief(plan) == [("move", "vae/v.pt", "vae/v.pt", method.value, removal.value, None, False)]
    # A link or rename the filesystem refuses after all falls back to a verified copy (planned, not chosen
    # while running); a copy has nothing to fall back to.
    assert plan.actions[0].methods == ((method,) if method is Method.COPY else (method, Method.COPY))
    assert plan.bytes_to_copy == (7 if method is Method.COPY else 0)


def test_link_mode_hardlinks_and_leaves_the_source():
    plan = plan_of(rec("vae/v.pt"), policy=Policy(mode=Mode.LINK))
    assert brief(plan) == [("link", "vae/v.pt", "vae/v.pt", "hardlink", "none", None, False)]


@pytest.mark.parametrize("probe", [RENAME_ONLY, OTHER_FS])
def test_link_mode_is_refused_at_plan_time_without_hardlinks(probe):
    with pytest.raises(BadInput, match="--mode link") as info:
        plan_of(rec("vae/v.pt"), policy=Policy(mode=Mode.LINK), probe=probe)
    assert "--mode move or --mode copy" in info.value.hint


def test_copy_mode_copies_and_leaves_the_source():
    plan = plan_of(rec("vae/v.pt", size=5), policy=Policy(mode=Mode.COPY))
    assert brief(plan) == [("copy", "vae/v.pt", "vae/v.pt", "copy", "none", None, False)]
    assert plan.bytes_to_copy == 5


def test_already_there_other_inode_is_quarantined_same_inode_only_unlinked():
    t1 = rec("loras/a.pt", "d1", root=TGT, ino=1)
    t2 = rec("loras/b.pt", "d2", root=TGT, ino=2)
    plan = plan_of(rec("loras/a.pt", "d1", ino=50), rec("loras/b.pt", "d2", ino=2), target=(t1, t2))
    assert brief(plan) == [
        ("already-there", "loras/a.pt", "loras/a.pt", "none", "quarantine", "loras/a.pt", False),
        ("already-there", "loras/b.pt", "loras/b.pt", "none", "unlink", "loras/b.pt", False),
    ]
    assert plan.bytes_to_copy == 0


def test_already_there_in_copy_mode_leaves_the_source():
    plan = plan_of(rec("loras/a.pt", "d1"), target=(rec("loras/a.pt", "d1", root=TGT),),
                   policy=Policy(mode=Mode.COPY))
    assert brief(plan) == [("already-there", "loras/a.pt", "loras/a.pt", "none", "none", "loras/a.pt", False)]
    assert not plan.has_work


def test_same_content_other_name_becomes_a_hardlink_to_the_one_copy():
    plan = plan_of(rec("loras/a.pt", "d1", size=9), rec("loras/copy.pt", "d1", size=9),
                   rec("checkpoints/x.pt", "d1", size=9))
    assert brief(plan) == [
        ("move", "checkpoints/x.pt", "checkpoints/x.pt", "hardlink", "unlink", None, False),
        ("same-content", "loras/a.pt", "loras/a.pt", "hardlink", "quarantine", "checkpoints/x.pt", False),
        ("same-content", "loras/copy.pt", "loras/copy.pt", "hardlink", "quarantine", "checkpoints/x.pt", False),
    ]
    assert plan.actions[1].reason == "same content as checkpoints/x.pt"


def test_same_content_as_a_file_already_in_the_target_and_symlinks_without_hardlinks():
    target = (rec("vae/stored.pt", "d1", root=TGT, ino=7),)
    for hardlinks, method in ((True, "hardlink"), (False, "symlink")):
        plan = plan_of(rec("vae/other.pt", "d1"), target=target, target_hardlinks=hardlinks)
        assert brief(plan) == [("same-content", "vae/other.pt", "vae/other.pt", method, "quarantine",
                                "vae/stored.pt", False)]


def test_conflict_is_never_overwritten_and_left_in_place_by_default():
    plan = plan_of(rec("loras/a.pt", "new"), target=(rec("loras/a.pt", "old", root=TGT),))
    assert brief(plan) == [("conflict", "loras/a.pt", "loras/a.pt", "none", "none", None, False)]
    assert "--on-conflict rename" in plan.actions[0].reason
    assert plan.warnings == (f"conflict: {SRC}/loras/a.pt: the store holds other bytes under this name; left in "
                             "place and shadowed (--on-conflict rename stores it as .conflict-N)",)
    assert not plan.has_work


def test_conflict_rename_keeps_both_with_a_free_suffix():
    target = (rec("loras/a.pt", "old", root=TGT), rec("loras/a.conflict-1.pt", "older", root=TGT))
    plan = plan_of(rec("loras/a.pt", "new"), target=target, policy=Policy(on_conflict=OnConflict.RENAME))
    assert brief(plan) == [("move", "loras/a.pt", "loras/a.conflict-2.pt", "hardlink", "unlink", None, False)]
    assert plan.actions[0].reason == "renamed to a.conflict-2.pt (name conflict)"


def test_conflict_with_a_non_model_in_the_target_is_still_a_conflict():
    target = (rec("loras/a.pt", root=TGT, status=Status.EMPTY, size=0),)
    plan = plan_of(rec("loras/a.pt", "d1"), target=target)
    assert [a.kind for a in plan.actions] == [ActionKind.CONFLICT]


@pytest.mark.parametrize("status, detail", [
    (Status.INCOMPLETE, "incomplete download"), (Status.PLACEHOLDER, "ComfyUI placeholder"),
    (Status.EMPTY, "empty file"), (Status.SPECIAL, "not a regular file (socket, FIFO or device)"),
    (Status.SYMLINK, "symlink to ../x (left as it is)"), (Status.UNCATEGORISED, "not in a category folder"),
    (Status.BAD_NAME, "name is not valid UTF-8"), (Status.UNREADABLE, "Permission denied"),
    (Status.CHANGED, "changed since it was scanned"), (Status.TEMP, ""),
])
def test_every_non_model_is_skipped_with_its_reason(status, detail):
    plan = plan_of(rec("loras/x.pt", status=status, detail=detail))
    (a,) = plan.actions
    assert (a.kind, a.method, a.removal, a.dst) == (ActionKind.SKIP, Method.NONE, Removal.NONE, None)
    assert a.reason == (detail or status.value)
    assert not plan.has_work


# --- ComfyUI's rules ---------------------------------------------------------------------------------

def test_legacy_unet_wins_over_diffusion_models_whatever_the_input_order():
    records = [rec("diffusion_models/x.pt", "new-dm"), rec("unet/x.pt", "old-unet"),
               rec("diffusion_models/y.pt", "dy"), rec("unet/sub/z.pt", "dz")]
    expected = [
        ("move", "unet/sub/z.pt", "diffusion_models/sub/z.pt", "hardlink", "unlink", None, False),
        ("move", "unet/x.pt", "diffusion_models/x.pt", "hardlink", "unlink", None, False),
        ("conflict", "diffusion_models/x.pt", "diffusion_models/x.pt", "none", "none", None, False),
        ("move", "diffusion_models/y.pt", "diffusion_models/y.pt", "hardlink", "unlink", None, False),
    ]
    for order in (records, records[::-1]):
        assert brief(plan_of(*order)) == expected


def test_text_encoders_wins_over_legacy_clip():
    plan = plan_of(rec("clip/t5.pt", "c"), rec("text_encoders/t5.pt", "t"))
    assert brief(plan) == [
        ("move", "text_encoders/t5.pt", "text_encoders/t5.pt", "hardlink", "unlink", None, False),
        ("conflict", "clip/t5.pt", "text_encoders/t5.pt", "none", "none", None, False),
    ]


def test_same_name_same_content_in_legacy_and_canonical_folder_is_already_there():
    plan = plan_of(rec("unet/x.pt", "d"), rec("diffusion_models/x.pt", "d"))
    assert brief(plan) == [
        ("move", "unet/x.pt", "diffusion_models/x.pt", "hardlink", "unlink", None, False),
        ("already-there", "diffusion_models/x.pt", "diffusion_models/x.pt", "none", "quarantine",
         "diffusion_models/x.pt", False),
    ]


def test_custom_node_folders_keep_their_name_and_get_a_link_back_when_moved():
    recs = [rec("insightface/inswapper_128.onnx", "i"), rec("ultralytics/bbox/face.pt", "u")]
    assert brief(plan_of(*recs)) == [
        ("move", "insightface/inswapper_128.onnx", "insightface/inswapper_128.onnx", "hardlink", "unlink", None,
         True),
        ("move", "ultralytics/bbox/face.pt", "ultralytics/bbox/face.pt", "hardlink", "unlink", None, True),
    ]
    assert [a.link_back for a in plan_of(*recs, policy=Policy(mode=Mode.COPY)).actions] == [False, False]
    assert [a.link_back for a in plan_of(*recs, policy=Policy(link_back=False)).actions] == [False, False]


def test_sources_in_the_order_given_first_one_keeps_the_content():
    s1 = scan(rec("loras/a.pt", "d", root=SRC2), root=SRC2)
    s2 = scan(rec("loras/a.pt", "d"), rec("loras/b.pt", "other"))
    plan = build_plan([s1, s2], None, TGT, Policy(), [Probe(SRC2, True, True), SAME_FS], True)
    assert [(a.kind, a.root) for a in plan.actions] == [
        (ActionKind.MOVE, SRC2), (ActionKind.ALREADY_THERE, SRC), (ActionKind.MOVE, SRC)]
    assert plan.sources == (SRC2, SRC)


# --- the YAML change ---------------------------------------------------------------------------------

USER_YAML = "other_ui:\n  base_path: /opt/other\n  checkpoints: models/Stable-diffusion\n"


def test_yaml_after_adds_the_managed_section_for_every_target_category():
    plan = plan_of(rec("unet/x.pt", "a"), rec("loras/l.pt", "b"), rec("insightface/i.onnx", "c"),
                   target=(rec("vae/v.pt", "v", root=TGT),),
                   yaml_path="/pod/ComfyUI/extra_model_paths.yaml", yaml_before=USER_YAML)
    assert plan.yaml_changes
    assert plan.yaml_after.startswith(USER_YAML)
    data = yaml.safe_load(plan.yaml_after)
    assert data["other_ui"] == yaml.safe_load(USER_YAML)["other_ui"]
    # every category of the installed ComfyUI (issue 21: later downloads land in the store), the
    # store's custom-node folder, and ComfyUI-Manager's download base
    want = {cat: cat for cat in comfy.CATEGORIES}
    want.update({"base_path": TGT, "is_default": True, "insightface": "insightface", "download_model_base": "."})
    assert data["comfy_migrate"] == want


def test_yaml_base_path_choices():
    for spec, value, base in (("relative", None, "../../store"), ("env:VOL", "/store", "${VOL}"),
                              ("env:VOL", "/", "${VOL}/store"), ("env:VOL", "/store/", "${VOL}")):
        paths = PathFacts("/pod/ComfyUI", TGT, "/", "/", env_name=spec[4:] or None, env_value=value)
        plan = plan_of(rec("loras/l.pt"), yaml_path="/pod/ComfyUI/extra_model_paths.yaml",
                       policy=Policy(base_path=spec), paths=paths)
        assert yaml.safe_load(plan.yaml_after)["comfy_migrate"]["base_path"] == base
        assert plan.base_path == base
    with pytest.raises(BadInput):
        plan_of(rec("loras/l.pt"), yaml_path="/y.yaml", policy=Policy(base_path="bogus"))


def test_yaml_typos_are_warned_about():
    plan = plan_of(rec("loras/l.pt"), yaml_path="/y.yaml", yaml_before="mine:\n  lora: /x\n")
    assert any("mine.lora looks like a typo for 'loras'" in w for w in plan.warnings)


@pytest.mark.parametrize("text", ["a: [\n", "sec:\n  checkpoints:\n    - a\n"])
def test_bad_yaml_is_refused_even_when_nothing_moves(text):
    # A broken YAML stops ComfyUI; the plan must say so, not report "no change".
    with pytest.raises(BadInput):
        plan_of(rec("loras/x.pt", status=Status.EMPTY), yaml_path="/y.yaml", yaml_before=text)
    with pytest.raises(BadInput):
        plan_of(rec("loras/x.pt"), yaml_path="/y.yaml", yaml_before=text)


def test_no_yaml_given_is_warned_about():
    plan = plan_of(rec("loras/x.pt"))
    assert plan.yaml_after is None
    assert any("ComfyUI will not see the target" in w for w in plan.warnings)


# --- roots and determinism ---------------------------------------------------------------------------

@pytest.mark.parametrize("sources, target, words", [
    ([SRC], SRC + "/store", "inside the source"),
    ([SRC], SRC, "same folder"),
    (["/store/models"], "/store", "inside the target"),
    (["/a/models", "/a/models/loras"], "/t", "sources overlap: /a/models/loras is inside /a/models"),
    (["/a/models", "/a/models"], "/t", "the same folder /a/models is given twice"),
])
def test_check_roots_refuses_overlaps(sources, target, words):
    with pytest.raises(BadInput, match=words):
        check_roots(sources, target)


def test_check_roots_accepts_siblings_with_common_prefix():
    check_roots(["/work/models"], "/work/models2")
    check_roots(["/a/models", "/a/models-old"], "/store")


def test_plan_is_a_function_of_its_input_not_of_record_order():
    records = [rec(f"{f}/{n}.pt", f"d{(i * 7 + j) % 5}", ino=100 + 10 * i + j)
               for i, f in enumerate(["loras", "unet", "diffusion_models", "clip", "insightface"])
               for j, n in enumerate("abc")]
    kw = dict(target=(rec("loras/a.pt", "d3", root=TGT, ino=1),), yaml_path="/y.yaml", yaml_before=USER_YAML)
    first = plan_of(*records, **kw)
    shuffled = records[:]
    random.Random(4).shuffle(shuffled)
    assert plan_of(*shuffled, **kw) == first


def test_plans_are_equal_whatever_the_free_space_and_differ_in_anything_else():
    """free_bytes is measured, not planned: two dry runs a moment apart are one plan (a dataclass
    field(compare=False) before; Plan, a NamedTuple now, overrides __eq__ and __hash__ for it)."""
    records = [rec("loras/a.pt", "d1"), rec("unet/b.pt", "d2", size=1000)]
    low, high = plan_of(*records, probe=OTHER_FS, free_bytes=10), plan_of(*records, probe=OTHER_FS, free_bytes=10**9)
    assert not low.fits and high.fits
    assert low == high and not low != high and hash(low) == hash(high) and len({low, high}) == 1
    for name in Plan._fields:
        other = low._replace(**{name: object()})
        counts = name not in ("free_bytes", "container_free")
        assert (other != low, low != other, hash(other) != hash(low)) == (counts, counts, counts), name
    assert low != tuple(low) and tuple(low) != low      # a plain tuple of the same values is no plan


# --- property: never two contents for one name, never over a target file -----------------------------

FOLDERS = ["loras", "unet", "diffusion_models", "clip", "text_encoders", "insightface"]
NAMES = ["a.pt", "b.pt", "a.conflict-1.pt", "s/a.pt"]
DIGESTS = ["d1", "d2", "d3"]

entries = st.tuples(st.sampled_from(FOLDERS), st.sampled_from(NAMES), st.sampled_from(DIGESTS),
                    st.sampled_from([Status.MIGRATE] * 4 + [Status.EMPTY, Status.SYMLINK]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sources=st.lists(st.dictionaries(st.tuples(st.sampled_from(FOLDERS), st.sampled_from(NAMES)),
                                     st.tuples(st.sampled_from(DIGESTS),
                                               st.sampled_from([Status.MIGRATE] * 4 + [Status.EMPTY])),
                                     max_size=10), min_size=1, max_size=2),
    target=st.dictionaries(st.tuples(st.sampled_from(["loras", "diffusion_models", "text_encoders", "unet",
                                                      "insightface"]), st.sampled_from(NAMES)),
                           st.sampled_from(DIGESTS), max_size=6),
    mode=st.sampled_from(list(Mode)), on_conflict=st.sampled_from(list(OnConflict)),
    hardlink=st.booleans(), rename=st.booleans(), target_hardlinks=st.booleans(),
)
def test_property_one_content_per_destination_and_no_target_file_overwritten(
        sources, target, mode, on_conflict, hardlink, rename, target_hardlinks):
    if mode is Mode.LINK:
        hardlink = True
    roots = [SRC, SRC2][:len(sources)]
    scans = [scan(*(rec(f"{f}/{n}", d, root=root, status=s) for (f, n), (d, s) in sorted(files.items())),
                  root=root) for root, files in zip(roots, sources)]
    tscan = scan(*(rec(f"{f}/{n}", d, root=TGT, dev=2) for (f, n), d in sorted(target.items())), root=TGT)
    existing = {f"{TGT}/{r.rel}": r.digest for r in tscan.records}
    plan = build_plan(scans, tscan, TGT, Policy(mode=mode, on_conflict=on_conflict),
                      [Probe(r, hardlink, rename) for r in roots], target_hardlinks)

    placing = {ActionKind.MOVE, ActionKind.LINK, ActionKind.COPY, ActionKind.SAME_CONTENT,
               ActionKind.ALREADY_THERE}
    content = dict(existing)
    written = set()
    for a in plan.actions:
        if a.kind is ActionKind.SKIP:
            assert a.dst is None and a.method is Method.NONE
            continue
        if a.kind is ActionKind.CONFLICT:
            assert a.method is Method.NONE and a.removal is Removal.NONE
            assert a.dst in content and content[a.dst] != a.digest
            continue
        assert a.kind in placing
        if a.method is not Method.NONE:
            assert a.dst not in existing, f"{a} would overwrite a target file"
            assert a.dst not in written, f"{a} writes a name twice"
            written.add(a.dst)
        assert content.setdefault(a.dst, a.digest) == a.digest, f"{a} puts other content at {a.dst}"
        if a.kind is ActionKind.SAME_CONTENT:
            assert content.get(a.stored) == a.digest and a.stored != a.dst
    # Every model file of a source is accounted for exactly once.
    assert len(plan.actions) == sum(len(s.records) for s in scans)
