"""`scan --duplicates` (migrate.disk.dupes) on real trees: the groups equal those of hashing every file in
full, whatever the sizes, shared ends or hardlinks; the digest cache spares every full read the
second time; the CLI's table and JSON."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import past_racy_window, run_cli
from migrate.disk.dupes import DIRECT, find_duplicates
from migrate.disk.hashing import PART, DigestCache, hash_path
from migrate.disk.scan import scan_tree

BIG = DIRECT + 3 * PART + 5        # read by its ends first


def content(kind: int, variant: int) -> bytes:
    """Contents built to fool shortcuts: same size, and for big files the same first and last
    PART bytes, differing only in the middle (or in one byte at the very end)."""
    if kind == 0:                                  # small, one of three contents of one size
        return bytes([65 + variant % 3]) * 100
    if kind == 1:                                  # small, another size
        return bytes([97 + variant % 2]) * 4000
    base = bytearray(b"head" * (BIG // 4 + 1))[:BIG]
    if kind == 2:
        base[BIG // 2] = variant % 3               # same ends, different middle
    else:
        base[-1] = variant % 2                     # differs in the last byte only
    return bytes(base)


entries = st.lists(
    st.tuples(st.sampled_from(["loras", "vae", "checkpoints"]), st.integers(0, 3), st.integers(0, 5),
              st.integers(-1, 8)),          # folder, kind, variant, hardlink to entry k (-1: a file)
    min_size=1, max_size=9)


def build(root: Path, spec) -> None:
    made = []
    for n, (folder, kind, variant, link) in enumerate(spec):
        path = root / folder / f"f{n}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        if 0 <= link < len(made):
            os.link(made[link], path)
        else:
            path.write_bytes(content(kind, variant))
        made.append(path)


def naive_groups(root: str):
    """Every file hashed in full, grouped by digest; names of one inode form one copy."""
    by_digest = {}
    for r in scan_tree(root).records:
        if r.status.migrates:
            inodes = by_digest.setdefault((r.size, hash_path(r.path)), {})
            inodes.setdefault((r.dev, r.ino), []).append(r.path)
    return sorted(sorted(tuple(sorted(names)) for names in inodes.values())
                  for inodes in by_digest.values() if len(inodes) > 1)


def found_groups(found):
    return sorted(sorted(c.names for c in g.copies) for g in found.groups)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=entries)
def test_groups_equal_those_of_hashing_everything(spec):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        build(root, spec)
        want = naive_groups(str(root))
        past_racy_window()
        cache = DigestCache(os.path.join(tmp, "digests.sqlite"))
        found = find_duplicates([scan_tree(str(root))], cache)
        assert found_groups(found) == want
        assert not found.problems
        for g in found.groups:
            assert len({os.stat(c.names[0]).st_ino for c in g.copies}) == len(g.copies)
        # Second time: every full digest comes from the cache (only ends that told files apart are
        # read again: partial digests are not cached).
        again = find_duplicates([scan_tree(str(root))], DigestCache(os.path.join(tmp, "digests.sqlite")))
        assert found_groups(again) == want
        assert again.hashed_files == 0
        assert again.partial_files <= found.partial_files


def test_unique_sizes_are_never_read(tmp_path):
    root = tmp_path / "models"
    for n in range(5):
        (root / "loras").mkdir(parents=True, exist_ok=True)
        (root / "loras" / f"{n}.safetensors").write_bytes(b"x" * (BIG + n))
    found = find_duplicates([scan_tree(str(root))], None)
    assert (found.groups, found.hashed_files, found.partial_files) == ((), 0, 0)


def test_big_files_differing_in_their_ends_are_not_read_in_full(tmp_path):
    root = tmp_path / "models" / "loras"
    root.mkdir(parents=True)
    (root / "a.safetensors").write_bytes(b"a" + bytes(BIG - 1))
    (root / "b.safetensors").write_bytes(b"b" + bytes(BIG - 1))
    found = find_duplicates([scan_tree(str(tmp_path / "models"))], None)
    assert (found.groups, found.hashed_files, found.partial_files) == ((), 0, 2)


def test_cli_table_and_json(tmp_path, cli_env):
    models = tmp_path / "models"
    (models / "loras").mkdir(parents=True)
    (models / "vae").mkdir()
    (models / "loras" / "a.safetensors").write_bytes(b"same" * 1000)
    os.link(models / "loras" / "a.safetensors", models / "loras" / "a-link.safetensors")
    (models / "vae" / "b.safetensors").write_bytes(b"same" * 1000)
    (models / "vae" / "c.safetensors").write_bytes(b"diff" * 1000)
    doc = json.loads(run_cli(["scan", "--source", models, "--duplicates", "--format", "json"], cli_env).stdout)
    assert [g["copies"] for g in doc["groups"]] == [[
        [str(models / "loras" / "a-link.safetensors"), str(models / "loras" / "a.safetensors")],
        [str(models / "vae" / "b.safetensors")]]]
    assert doc["totals"]["redundant_bytes"] == 4000 and doc["totals"]["redundant_copies"] == 1
    table = run_cli(["scan", "--source", models, "--duplicates"], cli_env).stdout
    assert "1 groups of identical content among 4 files: 1 redundant copies" in table
    assert str(models / "vae" / "c.safetensors") not in table
