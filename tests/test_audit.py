"""The audit (issue 7): content checks, tree checks, the `audit` command, and plan/run keeping
broken files out of the store."""
from __future__ import annotations

import importlib.util
import json
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import FIXTURES, make_pod, past_racy_window, run_cli, run_leaving_conflicts, snapshot_tree
from migrate.core import audit, comfy
from migrate.disk.hashing import DigestCache, stamp
from migrate.disk.scan import scan_tree
from migrate.disk.sniff import VerdictCache, check_scan


def _load(name):
    spec = importlib.util.spec_from_file_location(name, FIXTURES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)   # type: ignore[union-attr]
    return mod


broken = _load("make_broken")


def check(name: str, data: bytes) -> audit.Verdict:
    """check_content given exactly what the shell would read of this file."""
    size = len(data)
    head = data[:min(size, audit.HEAD)]
    head = data[:audit.head_needed(name, size, head)]
    t = audit.tail_needed(name, size, head)
    return audit.check_content(name, size, head, data[size - t:] if t else b"")


def kinds(v: audit.Verdict) -> set:
    return {f.kind for f in v.findings}


# --- content checks, pure ----------------------------------------------------------------------------

CONTENT_FIXTURES = sorted(rel for rel, data in broken.files().items()
                          if isinstance(data, bytes) and data and audit.sniffed(rel))


@pytest.mark.parametrize("rel", CONTENT_FIXTURES)
def test_each_fixture_file_alone(rel):
    """Content checks alone (tree-level kinds are checked through the CLI below)."""
    data = broken.files()[rel]
    want = broken.EXPECTED.get(rel, set()) - {"shadowed", "unlisted-extension", "incomplete-download"}
    assert kinds(check(rel, data)) == want


def test_safetensors_summary():
    v = check("x.safetensors", broken.VALID)
    assert v.findings == ()
    assert dict(v.summary) == {"format": "safetensors", "tensors": 5, "metadata": True,
                               "dtypes": {"BF16": 1, "F16": 2, "F32": 1, "F8_E4M3": 1},
                               "header_bytes": struct.unpack("<Q", broken.VALID[:8])[0]}


def test_header_larger_than_the_first_read_is_read_whole():
    big = broken.safetensors([(f"layer.{i}.weight", "F16", [2], 2) for i in range(3000)])
    assert struct.unpack("<Q", big[:8])[0] > audit.HEAD
    assert audit.head_needed("a.safetensors", len(big), big[:audit.HEAD]) > audit.HEAD
    assert check("a.safetensors", big).findings == ()
    assert kinds(check("a.safetensors", big[:-1])) == {"truncated"}


@pytest.mark.parametrize("name, data, kind", [
    ("a.safetensors", b"Not Found", "text"),
    ("a.ckpt", b"404: Not Found\n", "text"),
    ("a.pt", b'{"error": "Unauthorized"}', "error-response"),
    ("a.gguf", b"  <?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>", "html-page"),
    ("a.bin", broken.LFS, "lfs-pointer"),
    ("a.safetensors", b"\x80\x02" + bytes(30), "wrong-format"),
    ("a.pth", broken.VALID, "wrong-format"),
    ("a.safetensors", bytes(5), "truncated"),
    ("a.safetensors", struct.pack("<Q", 29) + b'["not", "an", "object"]      ', "bad-header"),
    ("a.safetensors", struct.pack("<Q", 54) + b'{"a":{"dtype":"F16","shape":[3],"data_offsets":[0,4]}}' + bytes(4),
     "bad-header"),
    ("a.safetensors", struct.pack("<Q", 54) + b'{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}' + bytes(3),
     "truncated"),
])
def test_content_kinds(name, data, kind):
    assert kind in kinds(check(name, data))


@pytest.mark.parametrize("name, data", [
    ("a.pkl", b"(dp0\nS'a'\np1\nI1\ns."),            # a protocol-0 pickle is text
    ("a.bin", b"\x00\x01\x02" * 10),                  # .bin is any format
    ("a.pt", b"\x80\x04\x95" + bytes(40)),           # a pickle
    ("a.pt2", make_pod.torch_zip_bytes(700, "a")),
    ("a.bin", make_pod.torch_zip_bytes(700, "b")),   # pytorch_model.bin
    ("a.safetensors", make_pod.safetensors_bytes(4096, "x")),
])
def test_valid_formats_have_no_finding(name, data):
    assert check(name, data).findings == ()


def test_header_length_starting_like_a_pickle_is_still_safetensors():
    """Found by the property test: a header of 640 bytes begins 0x80 0x02, a pickle's magic."""
    data = broken.safetensors([("w", "U8", [4], 1)], {"pad": ""})
    raw = data[8:-4]
    raw += b" " * (640 - len(raw))
    data = struct.pack("<Q", 640) + raw + bytes(4)
    assert data[:2] == b"\x80\x02"
    assert check("a.safetensors", data).findings == ()
    assert kinds(check("a.pth", data)) == {"wrong-format"}


def test_zip_with_trailing_bytes_and_with_a_comment():
    z = make_pod.torch_zip_bytes(900, "c")
    assert kinds(check("a.ckpt", z + b"junk" * 10)) == {"trailing-data"}
    commented = z[:-2] + struct.pack("<H", 5) + b"hello"     # a zip comment is part of the archive
    assert check("a.ckpt", commented).findings == ()


def test_verdict_round_trips_through_json():
    for data in (broken.VALID, broken.VALID[:-3], broken.LFS):
        v = check("a.safetensors", data)
        w = audit.Verdict.from_json(v.to_json())
        assert w.findings == v.findings and dict(w.summary) == dict(v.summary)


# --- property: valid safetensors never flagged; any cut or extension is ---------------------------------

DTYPES = sorted(audit.DTYPE_BITS)


@st.composite
def safetensors_files(draw):
    n = draw(st.integers(0, 6))
    tensor_names = st.text(min_size=1, max_size=12).filter(lambda s: s != "__metadata__")   # reserved key
    names = draw(st.lists(tensor_names, min_size=n, max_size=n, unique=True))
    header, offset = {}, 0
    for name in names:
        dtype = draw(st.sampled_from(DTYPES))
        bits = audit.DTYPE_BITS[dtype]
        shape = draw(st.lists(st.integers(0, 6), max_size=3))
        count = 1
        for d in shape:
            count *= d
        if count * bits % 8:
            shape, count = shape + [2], count * 2          # sub-byte dtypes: whole bytes only
            if count * bits % 8:
                shape, count = shape + [4], count * 4
        nbytes = count * bits // 8
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3))
    items = list(header.items())
    order = draw(st.permutations(range(len(items))))       # JSON key order is free
    raw = json.dumps({items[i][0]: items[i][1] for i in order}, ensure_ascii=draw(st.booleans())).encode()
    raw += b" " * draw(st.integers(0, 9))
    data = draw(st.binary(min_size=offset, max_size=offset))
    return struct.pack("<Q", len(raw)) + raw + data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(safetensors_files(), st.integers(1, 5000), st.binary(min_size=1, max_size=64))
def test_property_valid_is_clean_and_any_cut_or_extension_is_found(data, k, extra):
    assert check("m.safetensors", data).findings == ()
    cut = data[:max(0, len(data) - k)]
    if cut:
        assert kinds(check("m.safetensors", cut)) & {"truncated"}, cut
    longer = data + (extra * (k // len(extra) + 1))[:k]
    assert kinds(check("m.safetensors", longer)) == {"trailing-data"}


# --- the fixture tree through the CLI ------------------------------------------------------------------

@pytest.fixture
def broken_tree(tmp_path):
    return broken.build(str(tmp_path / "tree"))


def test_audit_finds_every_fixture_and_nothing_else(broken_tree, tmp_path, cli_env):
    proc = run_cli(["audit", "--target", broken_tree, "--format", "json"], cli_env, check=1)
    doc = json.loads(proc.stdout)
    assert doc["version"] == 1 and doc["ok"] is False
    found = {}
    for f in doc["findings"]:
        found.setdefault(os.path.relpath(f["path"], broken_tree), set()).add(f["kind"])
        assert f["fix"], f
        want_severity = "notice" if os.path.relpath(f["path"], broken_tree) in broken.SEVERITY["notice"] \
            else ("broken", "suspect")
        assert f["severity"] in want_severity, f
    assert found == broken.EXPECTED
    files = {os.path.relpath(f["path"], broken_tree): f for f in doc["files"]}
    assert files["checkpoints/ok.safetensors"]["tensors"] == 5
    assert files["checkpoints/ok_zip.ckpt"]["format"] == "zip"


def test_audit_table_and_a_clean_tree_exits_0(broken_tree, tmp_path, cli_env):
    out = run_cli(["audit", "--target", broken_tree], cli_env, check=1).stdout
    assert "truncated" in out and "lfs-pointer" in out and "download it again" in out
    clean = tmp_path / "clean" / "models"
    for rel, data in broken.files().items():
        if rel not in broken.EXPECTED:
            (clean / rel).parent.mkdir(parents=True, exist_ok=True)
            (clean / rel).write_bytes(data)
    out = run_cli(["audit", "--target", clean], cli_env).stdout
    assert "0 broken, 0 suspect, 0 notice" in out


def test_audit_of_the_demo_pod_finds_only_its_deliberate_faults(pod, cli_env):
    before = snapshot_tree(pod.root)
    doc = json.loads(run_cli(["audit", *pod.args(), "--format", "json"], cli_env, check=1).stdout)
    assert {(os.path.relpath(f["path"], pod.models), f["kind"]) for f in doc["findings"]} == {
        ("vae/broken_empty.safetensors", "empty"), ("loras/half_downloaded.safetensors.part", "incomplete-download")}
    assert snapshot_tree(pod.root) == before            # audit changes nothing
    assert len(doc["files"]) == 17


def test_audit_needs_something_to_check(tmp_path, cli_env):
    res = run_cli(["audit", "--target", tmp_path / "nowhere"], cli_env, check=3)
    assert "does not exist" in res.stderr
    res = run_cli(["audit"], dict(cli_env, COMFY_MIGRATE_TARGET=str(tmp_path / "nowhere")), check=3)
    assert res.stderr.count("\n") == 1


def test_shadowing_follows_the_yaml(tmp_path, cli_env):
    """A YAML `is_default` store shadows ComfyUI's own folder: the pod's copy is the hidden one."""
    comfyui = tmp_path / "ComfyUI"
    store = tmp_path / "store"
    for root, size in ((comfyui / "models", 2048), (store, 3072)):
        (root / "loras").mkdir(parents=True)
        (root / "loras" / "x.safetensors").write_bytes(make_pod.safetensors_bytes(size, "x"))
    (comfyui / "extra_model_paths.yaml").write_text(f"s:\n  base_path: {store}\n  is_default: true\n  loras: loras\n")
    doc = json.loads(run_cli(["audit", "--comfyui", comfyui, "--target", store, "--format", "json"],
                             cli_env, check=1).stdout)
    assert [(f["path"], f["kind"], f["severity"]) for f in doc["findings"]] == [
        (str(comfyui / "models" / "loras" / "x.safetensors"), "shadowed", "suspect")]
    # the same model twice (a copy of the same size) is only a notice: exit 0
    (comfyui / "models" / "loras" / "x.safetensors").write_bytes((store / "loras" / "x.safetensors").read_bytes())
    doc = json.loads(run_cli(["audit", "--comfyui", comfyui, "--target", store, "--format", "json"],
                             cli_env).stdout)
    assert [(f["kind"], f["severity"]) for f in doc["findings"]] == [("shadowed", "notice")]
    assert "the same content" in doc["findings"][0]["message"]
    # another model of the very same size (common: fp8 variants, LoRAs of one rank) is decided by digest
    (comfyui / "models" / "loras" / "x.safetensors").write_bytes(make_pod.safetensors_bytes(3072, "other"))
    assert (comfyui / "models" / "loras" / "x.safetensors").stat().st_size == (store / "loras" / "x.safetensors").stat().st_size
    doc = json.loads(run_cli(["audit", "--comfyui", comfyui, "--target", store, "--format", "json"],
                             cli_env, check=1).stdout)
    assert [(f["kind"], f["severity"]) for f in doc["findings"]] == [("shadowed", "suspect")]
    assert "different content" in doc["findings"][0]["message"]


# --- cost: verdicts cached like digests -----------------------------------------------------------------

def test_warm_check_reads_no_file_and_a_change_is_seen(broken_tree, tmp_path):
    cache_path = str(tmp_path / "c.sqlite")
    digests = DigestCache(cache_path)
    past_racy_window()
    scan = scan_tree(broken_tree)
    first, read = check_scan(scan, VerdictCache(cache_path), digests)
    digests.save()
    assert read == sum(1 for r in scan.records if r.status.migrates and audit.sniffed(r.rel))
    again, read = check_scan(scan_tree(broken_tree), VerdictCache(cache_path))
    assert read == 0 and again == first
    # a small file read whole for the check has its digest cached: hashing it later reads nothing
    assert DigestCache(cache_path).get(stamp(os.stat(os.path.join(broken_tree, "checkpoints/ok.safetensors")))) \
        is not None
    path = os.path.join(broken_tree, "checkpoints/ok.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 1)
    later, read = check_scan(scan_tree(broken_tree), VerdictCache(cache_path))
    assert read == 1 and kinds(later[path]) == {"truncated"}


def test_a_verdict_cache_made_first_leaves_the_digest_cache_working(tmp_path, broken_tree):
    cache_path = str(tmp_path / "c.sqlite")
    check_scan(scan_tree(broken_tree), VerdictCache(cache_path))
    d = DigestCache(cache_path)
    d.put((1, 2, 3, 4, 5), "ab" * 16, 10 ** 10)
    d.save()
    assert DigestCache(cache_path).get((1, 2, 3, 4, 5)) == "ab" * 16
    assert not os.path.exists(cache_path + ".damaged")


# --- plan/run keep broken files out of the store --------------------------------------------------------

def test_run_never_moves_a_truncated_model_and_rollback_restores_all(pod, cli_env):
    bad = pod.models / "loras" / "cut_short.safetensors"
    bad.write_bytes(make_pod.safetensors_bytes(64 << 10, "cut")[:-4096])
    lfs = pod.models / "checkpoints" / "pointer.safetensors"
    lfs.write_bytes(broken.LFS)
    before = snapshot_tree(pod.root)
    doc = json.loads(run_cli(["plan", *pod.args(), "--format", "json"], cli_env).stdout)
    acts = {os.path.relpath(a["source"], pod.models): a for a in doc["actions"]}
    for rel, kind in (("loras/cut_short.safetensors", "truncated"), ("checkpoints/pointer.safetensors", "lfs-pointer")):
        assert acts[rel]["action"] == "skip" and kind in acts[rel]["reason"], acts[rel]
        assert any(f["path"] == str(pod.models / rel) and f["kind"] == kind for f in doc["findings"])
    run = run_cli(["run", *pod.args(), "--yes"], cli_env, check=1)     # files held back: exit 1 (issue 15)
    assert "truncated" in run.stderr
    assert not (pod.target / "loras" / "cut_short.safetensors").exists()
    assert not (pod.target / "checkpoints" / "pointer.safetensors").exists()
    assert before["runpod-slim/ComfyUI/models/loras/cut_short.safetensors"] == \
        snapshot_tree(pod.root)["runpod-slim/ComfyUI/models/loras/cut_short.safetensors"]
    # ComfyUI still finds the name where it was (its own models folder is always searched)
    order = comfy.search_folders([(str(pod.yaml), pod.yaml.read_text())], str(pod.models))
    from migrate.app.verify import loaded_path
    assert loaded_path(order, "loras", "cut_short.safetensors") == str(bad)
    run_cli(["rollback", "--target", pod.target, "--yes"], cli_env)

    def files(snap):     # every file and symlink: kind, mode, mtime, bytes (the YAML gets a new inode)
        return {k: v[:3] + v[5:] for k, v in snap.items() if v[0] != "dir" and ".comfy-migrate" not in k}
    after = snapshot_tree(pod.root)
    assert files(after) == files(before)
    held = "runpod-slim/ComfyUI/models/loras/cut_short.safetensors"
    assert after[held] == before[held]          # never touched: same inode, bytes, mtime


def test_include_suspect_moves_it_anyway(pod, cli_env):
    bad = pod.models / "loras" / "cut_short.safetensors"
    data = make_pod.safetensors_bytes(64 << 10, "cut")[:-4096]
    bad.write_bytes(data)
    out = run_cli(["plan", *pod.args(), "--include-suspect"], cli_env).stdout
    assert "audit: broken: " in out and "cut_short.safetensors: truncated" in out
    run_leaving_conflicts([*pod.args(), "--include-suspect", "--yes"], cli_env)
    assert (pod.target / "loras" / "cut_short.safetensors").read_bytes() == data
