"""scan_tree / hash_records on real trees in tmp_path: classification, skip reasons, digests, cache."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import xxhash

from migrate.core import comfy
from migrate.disk import scan as scanmod
from migrate.disk.hashing import DigestCache
from migrate.core.model import Status
from migrate.disk.scan import hash_records, scan_tree
from conftest import past_racy_window


def put(root: Path, rel: str, data: bytes = b"model bytes") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def by_rel(result):
    return {r.rel: r for r in result.records}


def test_every_category_folder_legacy_and_custom(tmp_path):
    src = tmp_path / "models"
    folders = sorted({f for folders, _ in comfy.CATEGORIES.values() for f in folders})
    folders += ["insightface", "ultralytics", "LLM"]
    for f in folders:
        put(src, f"{f}/sub/m.safetensors", f.encode())
    recs = by_rel(scan_tree(str(src)))
    assert set(recs) == {f"{f}/sub/m.safetensors" for f in folders}
    got = {r.folder: (r.category, r.custom, r.status, r.name) for r in recs.values()}
    assert got["unet"] == ("diffusion_models", False, Status.MIGRATE, "sub/m.safetensors")
    assert got["clip"] == ("text_encoders", False, Status.MIGRATE, "sub/m.safetensors")
    assert got["t2i_adapter"][:2] == ("controlnet", False)
    assert got["insightface"] == ("insightface", True, Status.MIGRATE, "sub/m.safetensors")
    assert got["LLM"][:2] == ("LLM", True)
    for cat in comfy.CATEGORIES:
        assert got[cat][:2] == (cat, False)


@pytest.mark.parametrize("suffix", comfy.INCOMPLETE_SUFFIXES)
def test_incomplete_downloads_are_skipped(tmp_path, suffix):
    put(tmp_path / "m", f"loras/a.safetensors{suffix}")
    put(tmp_path / "m", f"loras/B{suffix.upper()}")
    recs = by_rel(scan_tree(str(tmp_path / "m")))
    assert {r.status for r in recs.values()} == {Status.INCOMPLETE}
    assert recs[f"loras/a.safetensors{suffix}"].detail == "incomplete download"


@pytest.mark.parametrize("name", ["put_checkpoints_here", "put_loras_here", "Put_VAE_Here.txt"])
def test_placeholders_are_skipped(tmp_path, name):
    put(tmp_path / "m", f"checkpoints/{name}", b"")
    (r,) = scan_tree(str(tmp_path / "m")).records
    assert r.status is Status.PLACEHOLDER


def test_empty_file_is_skipped(tmp_path):
    put(tmp_path / "m", "vae/broken.safetensors", b"")
    (r,) = scan_tree(str(tmp_path / "m")).records
    assert (r.status, r.size, r.category) == (Status.EMPTY, 0, "vae")


def test_fifo_and_socket_are_special_and_never_opened(tmp_path, monkeypatch):
    loras = tmp_path / "m" / "loras"
    loras.mkdir(parents=True)
    os.mkfifo(loras / "pipe.safetensors")
    monkeypatch.chdir(loras)        # a relative bind keeps the socket path short
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind("sock.safetensors")
        result = hash_records(scan_tree(str(tmp_path / "m")), None)   # would block on a FIFO if opened
    finally:
        sock.close()
    recs = by_rel(result)
    assert {rel: r.status for rel, r in recs.items()} == {
        "loras/pipe.safetensors": Status.SPECIAL, "loras/sock.safetensors": Status.SPECIAL}
    assert all(r.digest is None for r in recs.values())
    assert result.hashed_files == 0


def test_symlinks_are_reported_with_their_target_and_never_followed(tmp_path):
    src = tmp_path / "m"
    put(src, "loras/real.safetensors")
    outside = tmp_path / "outside"
    put(outside, "big.safetensors")
    (src / "upscale_models").mkdir()
    os.symlink("../loras/real.safetensors", src / "upscale_models/x.pth")
    os.symlink(str(outside), src / "checkpoints")                # a symlinked category folder
    os.symlink("nowhere", src / "loras/dangling.safetensors")
    recs = by_rel(scan_tree(str(src)))
    assert set(recs) == {"loras/real.safetensors", "upscale_models/x.pth", "checkpoints",
                         "loras/dangling.safetensors"}
    assert recs["upscale_models/x.pth"].status is Status.SYMLINK
    assert recs["upscale_models/x.pth"].link_target == "../loras/real.safetensors"
    assert "../loras/real.safetensors" in recs["upscale_models/x.pth"].detail
    assert recs["checkpoints"].status is Status.SYMLINK
    assert recs["checkpoints"].link_target == str(outside)
    assert recs["loras/dangling.safetensors"].link_target == "nowhere"


def test_non_utf8_name_is_reported_not_migrated(tmp_path):
    src = tmp_path / "m"
    (src / "loras").mkdir(parents=True)
    for raw in (b"loras/caf\xe9.safetensors", b"\xff\xfe/x.safetensors"):
        os.makedirs(os.path.dirname(os.fsencode(src) + b"/" + raw), exist_ok=True)
        with open(os.fsencode(src) + b"/" + raw, "wb") as f:
            f.write(b"data")
    result = hash_records(scan_tree(str(src)), None)
    bad = [r for r in result.records if r.status is Status.BAD_NAME]
    assert sorted(os.fsencode(r.rel) for r in bad) == [b"loras/caf\xe9.safetensors", b"\xff\xfe/x.safetensors"]
    assert all(r.digest is None for r in bad)


def test_file_at_models_root_is_uncategorised(tmp_path):
    put(tmp_path / "m", "stray.safetensors")
    (r,) = scan_tree(str(tmp_path / "m")).records
    assert (r.status, r.category, r.folder) == (Status.UNCATEGORISED, None, "")


def test_state_folder_git_and_our_temp_files(tmp_path):
    src = tmp_path / "m"
    put(src, ".comfy-migrate/journal")
    put(src, "loras/.git/config")
    put(src, "loras/.a.safetensors.cm-tmp-123")
    put(src, "loras/.hidden.safetensors")
    recs = by_rel(scan_tree(str(src)))
    assert {rel: r.status for rel, r in recs.items()} == {
        "loras/.a.safetensors.cm-tmp-123": Status.TEMP, "loras/.hidden.safetensors": Status.MIGRATE}


def test_walk_is_sorted_and_deterministic(tmp_path):
    src = tmp_path / "m"
    for rel in ("loras/b.pt", "loras/a.pt", "loras/wan/x.pt", "vae/z.pt", "checkpoints/c.pt"):
        put(src, rel)
    first = scan_tree(str(src))
    assert [r.rel for r in first.records] == [
        "checkpoints/c.pt", "loras/a.pt", "loras/b.pt", "loras/wan/x.pt", "vae/z.pt"]
    assert scan_tree(str(src)) == first


def test_unreadable_folder_is_a_problem_and_the_walk_goes_on(tmp_path, monkeypatch):
    # As root chmod cannot make a folder unreadable, so os.scandir refuses it instead.
    src = tmp_path / "m"
    put(src, "checkpoints/a.pt")
    put(src, "loras/locked/x.pt")
    put(src, "loras/z.pt")
    put(src, "vae/v.pt")
    real = os.scandir

    def scandir(path):
        if str(path).endswith("/loras/locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(scanmod.os, "scandir", scandir)
    result = scan_tree(str(src))
    assert [r.rel for r in result.records] == ["checkpoints/a.pt", "loras/z.pt", "vae/v.pt"]
    assert [(p.path, "Permission denied" in p.message) for p in result.problems] == [
        (str(src / "loras/locked"), True)]


# --- hashing and the cache ---------------------------------------------------------------------------

def test_digest_is_xxh3_128_hex_like_xxhsum_H2(tmp_path):
    src = tmp_path / "m"
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = put(src, "loras/a.safetensors", data)
    (r,) = hash_records(scan_tree(str(src)), None).records
    assert r.digest == xxhash.xxh3_128(data).hexdigest()
    assert len(r.digest) == 32 and int(r.digest, 16) >= 0
    if shutil.which("xxhsum"):
        out = subprocess.run(["xxhsum", "-H2", str(path)], capture_output=True, text=True, check=True).stdout
        assert out.split()[0] == r.digest


def test_second_scan_reads_only_what_changed_even_with_times_put_back(tmp_path):
    src = tmp_path / "m"
    files = {"loras/a.pt": b"a" * 1000, "loras/b.pt": b"b" * 2000, "vae/c.pt": os.urandom(9 << 20)}
    for rel, data in files.items():
        put(src, rel, data)
    past_racy_window()
    cache_path = str(tmp_path / "cache" / "digests.sqlite")
    first = hash_records(scan_tree(str(src)), DigestCache(cache_path))
    assert (first.hashed_files, first.cached_files) == (3, 0)
    assert os.path.exists(cache_path)
    same = hash_records(scan_tree(str(src)), DigestCache(cache_path))
    assert (same.hashed_files, same.hashed_bytes, same.cached_files) == (0, 0, 3)

    # Same size, same inode, mtime put back (cp -p, rsync -t, tar): the ctime moved, so the
    # cached digest is not trusted (it once was, and a model was lost for it).
    path = src / "vae/c.pt"
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.write(b"X" * 4096)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_ino == st.st_ino and os.stat(path).st_ctime_ns != st.st_ctime_ns

    second = hash_records(scan_tree(str(src)), DigestCache(cache_path))
    assert (second.hashed_files, second.hashed_bytes, second.cached_files) == (1, 9 << 20, 2)
    assert by_rel(second)["vae/c.pt"].digest == xxhash.xxh3_128(path.read_bytes()).hexdigest()
    assert by_rel(second)["vae/c.pt"].digest != by_rel(first)["vae/c.pt"].digest
    assert by_rel(second)["loras/a.pt"].digest == by_rel(first)["loras/a.pt"].digest


def test_cache_misses_on_a_new_inode_or_mtime(tmp_path):
    src = tmp_path / "m"
    a = put(src, "loras/a.pt", b"1" * 100)
    b = put(src, "loras/b.pt", b"2" * 100)
    cache_path = str(tmp_path / "c.sqlite")
    hash_records(scan_tree(str(src)), DigestCache(cache_path))
    st = os.stat(a)
    tmp = put(src, "loras/.new", b"3" * 100)          # replaced by rename: new inode, same size+mtime
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, a)
    b.write_bytes(b"4" * 100)                         # same inode, new mtime
    again = by_rel(hash_records(scan_tree(str(src)), DigestCache(cache_path)))
    assert again["loras/a.pt"].digest == xxhash.xxh3_128(b"3" * 100).hexdigest()
    assert again["loras/b.pt"].digest == xxhash.xxh3_128(b"4" * 100).hexdigest()


def test_damaged_cache_is_discarded_not_trusted(tmp_path):
    src = tmp_path / "m"
    put(src, "loras/a.pt", b"abc")
    cache_path = tmp_path / "c.sqlite"
    cache_path.write_bytes(b"this is not sqlite" * 100)
    (r,) = hash_records(scan_tree(str(src)), DigestCache(str(cache_path))).records
    assert r.digest == xxhash.xxh3_128(b"abc").hexdigest()


def test_file_changed_or_vanished_after_the_walk_is_reported(tmp_path):
    src = tmp_path / "m"
    put(src, "loras/grows.pt", b"a" * 10)
    put(src, "loras/gone.pt", b"b" * 10)
    put(src, "loras/ok.pt", b"c" * 10)
    walked = scan_tree(str(src))
    (src / "loras/grows.pt").write_bytes(b"a" * 11)
    (src / "loras/gone.pt").unlink()
    result = hash_records(walked, None)
    recs = by_rel(result)
    assert recs["loras/grows.pt"].status is Status.CHANGED
    assert recs["loras/gone.pt"].status is Status.CHANGED
    assert recs["loras/ok.pt"].status is Status.MIGRATE
    assert sorted(p.path for p in result.problems) == [str(src / "loras/gone.pt"), str(src / "loras/grows.pt")]


def test_entry_vanishing_between_listing_and_lstat_is_a_problem_and_the_walk_goes_on(tmp_path, monkeypatch):
    src = tmp_path / "m"
    put(src, "loras/a.pt")
    put(src, "loras/gone.pt")
    put(src, "vae/v.pt")
    real = os.scandir

    class Listing(list):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def scandir(path):
        with real(path) as it:
            entries = Listing(it)
        if str(path).endswith("/loras"):
            (src / "loras/gone.pt").unlink()     # listed, then gone before its lstat
        return entries

    monkeypatch.setattr(scanmod.os, "scandir", scandir)
    result = scan_tree(str(src))
    assert [r.rel for r in result.records] == ["loras/a.pt", "vae/v.pt"]
    assert [p.path for p in result.problems] == [str(src / "loras/gone.pt")]
    assert "vanished" in result.problems[0].message
