"""migrate.disk.hashing on real files in tmp_path: digests as `xxhsum -H2` prints them, hash_many's order
and per-file errors (FIFO, symlink to a device, vanished file), the split read of a large file, the
digest cache's keys. No timing here: speed is measured by scripts/bench."""
from __future__ import annotations

import os
import time
import shutil
import subprocess
import threading
from pathlib import Path
from typing import List

import pytest
import xxhash

from migrate.disk import hashing
from migrate.disk.hashing import (BUFFER, LARGE, SPLIT, ChangedError, DigestCache, default_cache_path, hash_bytes,
                             hash_fd, hash_many, hash_path, open_regular, stat_key)

SIZES = [0, 1, BUFFER - 1, BUFFER, BUFFER + 1, 3 * BUFFER + 17, LARGE + 1, SPLIT + BUFFER // 2 + 3]


def data_of(size: int, seed: int = 0) -> bytes:
    block = xxhash.xxh3_128(str(seed).encode()).digest() * 4096     # 64 KiB, distinct per seed
    reps = size // len(block) + 1
    return (block * reps)[:size] if size else b""


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def key_of(path: Path):
    return stat_key(os.lstat(path))


def run_with_deadline(fn, seconds: float = 60):
    """Run fn in a thread; fail (instead of hanging the suite) if it does not return in time."""
    out: List = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "hashing hung"
    return out[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> List[Path]:
    root = tmp_path_factory.mktemp("sizes")
    return [write(root / f"f{size}.safetensors", data_of(size, i)) for i, size in enumerate(SIZES)]


def test_digest_is_xxh3_128_hex_for_sizes_around_the_buffer(files):
    for path in files:
        want = xxhash.xxh3_128(path.read_bytes()).hexdigest()
        assert hash_path(str(path)) == want, path.name
        assert hash_path(str(path), key_of(path)) == want, path.name
        assert hash_path(str(path), buf=bytearray(BUFFER)) == want, path.name     # unaligned buffer
        assert hash_path(str(path), buf=bytearray(100_000)) == want, path.name    # odd size
        assert hash_bytes(path.read_bytes()) == want
        fd = open_regular(str(path))
        try:
            assert hash_fd(fd, bytearray(BUFFER)) == want
        finally:
            os.close(fd)
        assert len(want) == 32 and int(want, 16) >= 0


@pytest.mark.skipif(shutil.which("xxhsum") is None, reason="xxhsum not installed")
def test_digest_is_what_xxhsum_H2_prints(files):
    out = subprocess.run(["xxhsum", "-H2", *map(str, files)], capture_output=True, text=True, check=True).stdout
    theirs = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in out.splitlines()}
    for path in files:
        assert theirs[str(path)] == hash_path(str(path)), path.name


def test_hash_many_keeps_order_with_any_number_of_workers(files):
    jobs = [(str(p), key_of(p)) for p in reversed(files)] + [(str(files[0]), key_of(files[0]))]
    want = [(xxhash.xxh3_128(Path(p).read_bytes()).hexdigest(), None) for p, _ in jobs]
    for workers in (None, 1, 2, 3, 8):
        assert run_with_deadline(lambda: hash_many(jobs, workers=workers)) == want, workers
    assert hash_many([]) == []


def test_hash_many_reports_every_byte_once(files):
    jobs = [(str(p), key_of(p)) for p in files]
    seen: List[int] = []
    lock = threading.Lock()

    def on_bytes(n: int) -> None:
        with lock:
            seen.append(n)

    hash_many(jobs, on_bytes, workers=2)
    assert sum(seen) == sum(SIZES)


def test_several_large_files_and_small_ones_together(tmp_path):
    paths = [write(tmp_path / f"loras/big{i}.safetensors", data_of(SPLIT + i * BUFFER + 5, 100 + i)) for i in range(3)]
    paths += [write(tmp_path / f"loras/s{i}.pt", data_of(i * 1000, 200 + i)) for i in range(50)]
    jobs = [(str(p), key_of(p)) for p in paths]
    got = run_with_deadline(lambda: hash_many(jobs, workers=2))
    assert got == [(xxhash.xxh3_128(p.read_bytes()).hexdigest(), None) for p in paths]


def test_errors_are_per_file_entries_and_nothing_hangs(tmp_path):
    good = write(tmp_path / "loras/a.safetensors", b"a" * 5000)
    fifo = tmp_path / "loras/x.safetensors"
    os.mkfifo(fifo)
    link = tmp_path / "loras/zero.safetensors"
    os.symlink("/dev/zero", link)
    gone = write(tmp_path / "loras/gone.safetensors", b"g" * 10)
    gone_key = key_of(gone)
    gone.unlink()
    big_gone = write(tmp_path / "loras/biggone.safetensors", data_of(LARGE + 10))
    big_gone_key = key_of(big_gone)
    big_gone.unlink()
    big = write(tmp_path / "loras/big.safetensors", data_of(SPLIT + 1, 7))
    jobs = [(str(fifo), key_of(fifo)), (str(good), key_of(good)), (str(link), key_of(link)),
            (str(gone), gone_key), (str(big_gone), big_gone_key), (str(big), key_of(big))]
    for workers in (1, 2):
        got = run_with_deadline(lambda: hash_many(jobs, workers=workers), 30)
        assert [d is not None for d, _ in got] == [False, True, False, False, False, True]
        assert got[1][0] == xxhash.xxh3_128(b"a" * 5000).hexdigest()
        assert got[5][0] == xxhash.xxh3_128(big.read_bytes()).hexdigest()
        assert isinstance(got[0][1], ChangedError) and "not a regular file" in got[0][1].strerror
        assert isinstance(got[2][1], OSError) and not isinstance(got[2][1], ChangedError)   # ELOOP: refused
        assert isinstance(got[3][1], FileNotFoundError)
        assert isinstance(got[4][1], FileNotFoundError)
    with pytest.raises(OSError):
        hash_path(str(link))

    def hash_the_fifo():
        try:
            return hash_path(str(fifo))
        except OSError as exc:
            return exc

    assert isinstance(run_with_deadline(hash_the_fifo, 30), ChangedError)


def test_a_file_changed_since_the_scan_is_an_error_not_a_digest(tmp_path):
    for size in (100, LARGE + 3, SPLIT + 3):
        path = write(tmp_path / f"loras/m{size}.pt", data_of(size, 1))
        key = key_of(path)
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        with pytest.raises(ChangedError):
            hash_path(str(path), key)
        ((digest, err),) = hash_many([(str(path), key)])
        assert digest is None and isinstance(err, ChangedError)
        assert "changed since it was scanned" in err.strerror


def test_a_file_cut_short_while_it_is_read_in_parallel_is_an_error(tmp_path, monkeypatch):
    path = write(tmp_path / "checkpoints/m.safetensors", data_of(SPLIT + 4 * BUFFER, 3))
    real_open = hashing._open

    def open_then_truncate(p, expect, advise):
        fd, st = real_open(p, expect, advise)
        os.truncate(p, SPLIT // 2)            # the open file loses its second half
        return fd, st

    monkeypatch.setattr(hashing, "_open", open_then_truncate)
    with pytest.raises(ChangedError):
        hash_path(str(path))
    write(path, data_of(SPLIT + 4 * BUFFER, 3))
    ((digest, err),) = run_with_deadline(lambda: hash_many([(str(path), key_of(path))], workers=2))
    assert digest is None and isinstance(err, ChangedError)


def test_cache_hits_only_on_the_same_device_inode_size_mtime_and_ctime(tmp_path):
    path = write(tmp_path / "loras/a.pt", b"x" * 100)
    s = hashing.stamp(os.stat(path))
    later = time.time_ns() + 10 ** 9      # the digest was read well after the file's last change
    db = str(tmp_path / "cache" / "digests.sqlite")
    cache = DigestCache(db)
    assert cache.get(s) is None
    cache.put(s, "d" * 32, later)
    assert cache.get(s) == "d" * 32
    cache.save()

    again = DigestCache(db)
    assert again.get(s) == "d" * 32
    dev, ino, size, mtime, ctime = s
    assert again.get((dev, ino, size, mtime + 1, ctime)) is None        # changed mtime -> miss
    assert again.get((dev, ino, size + 1, mtime, ctime)) is None        # changed size -> miss
    assert again.get((dev, ino + 1, size, mtime, ctime)) is None        # another inode -> miss
    assert again.get((dev, ino, size, mtime, ctime + 1)) is None        # rewritten, times put back -> miss

    st = os.stat(path)
    with open(path, "r+b") as f:          # an in-place rewrite with the mtime put back: ctime moves
        f.write(b"y" * 100)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = hashing.stamp(os.stat(path))
    assert now[:4] == s[:4] and now[4] != s[4]
    assert DigestCache(db).get(now) is None
    assert DigestCache(None).get(s) is None
    DigestCache(None).save()                                     # no path: nothing to do


def test_racily_clean_entries_are_read_again():
    # A digest read in the same tick as the file's last change proves nothing: a write in that tick
    # leaves every timestamp as it was (git's "racily clean").
    fine = (1, 2, 3, 5_000_000_123, 5_000_000_456)
    assert hashing.racy(fine, 5_000_000_456)
    assert hashing.racy(fine, 5_000_000_456 + hashing.FINE_SLACK_NS)
    assert not hashing.racy(fine, 5_000_000_457 + hashing.FINE_SLACK_NS)
    coarse = (1, 2, 3, 7_000_000_000, 7_000_000_000)               # whole seconds: MooseFS, exFAT
    assert hashing.racy(coarse, 7_000_000_000 + hashing.FINE_SLACK_NS + 1)
    assert not hashing.racy(coarse, 7_000_000_001 + hashing.COARSE_SLACK_NS)
    future = (1, 2, 3, 9_000_000_000, 5_000_000_456)                # an mtime set ahead: never trusted
    assert hashing.racy(future, 8_000_000_000)
    cache = DigestCache(None)
    cache.put(fine, "d" * 32, 5_000_000_456)
    assert cache.get(fine) is None
    cache.put(fine, "d" * 32, 6_000_000_000)
    assert cache.get(fine) == "d" * 32


def test_inodes_past_2_to_the_63_round_trip_through_the_cache(tmp_path):
    # FUSE filesystems (rclone mount) report inode numbers >= 2**63; SQLite's INTEGER is signed.
    db = str(tmp_path / "digests.sqlite")
    big = [(2 ** 64 - 1, 2 ** 63, 10, 1, 2), (5, 2 ** 64 - 2, 11, 1, 2), (7, 2 ** 63 - 1, 12, 1, 2), (0, 0, 0, 0, 0)]
    cache = DigestCache(db)
    for n, s in enumerate(big):
        cache.put(s, f"{n:032x}", 10 ** 10)
    cache.save()
    again = DigestCache(db)
    assert [again.get(s) for s in big] == [f"{n:032x}" for n in range(len(big))]
    assert again.get((2 ** 64 - 1, 2 ** 63 - 2 ** 64, 10, 1, 2)) is None     # not confused with its signed twin
    from migrate.disk.sniff import VerdictCache
    from migrate.core.audit import Verdict
    verdicts = VerdictCache(db)
    v = Verdict()
    verdicts.put(big[0], v, 10 ** 10)
    verdicts.save()
    assert VerdictCache(db).get(big[0]) == v


def test_a_damaged_cache_is_set_aside(tmp_path):
    db = tmp_path / "digests.sqlite"
    db.write_bytes(b"not sqlite at all" * 100)
    cache = DigestCache(str(db))
    assert cache.get((1, 2, 3, 4)) is None
    assert (tmp_path / "digests.sqlite.damaged").exists()


def test_default_cache_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("COMFY_MIGRATE_CACHE", str(tmp_path / "c.sqlite"))
    assert default_cache_path() == str(tmp_path / "c.sqlite")
    monkeypatch.delenv("COMFY_MIGRATE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_path() == str(tmp_path / "xdg" / "comfy-migrate" / "digests.sqlite")


def test_buffers_are_aligned_for_fast_kernel_copies():
    import ctypes
    buf = hashing.aligned_buffer()
    assert ctypes.addressof(ctypes.c_char.from_buffer(buf)) % hashing.ALIGN == 0
    view = hashing._aligned_view(bytearray(BUFFER))
    assert ctypes.addressof(ctypes.c_char.from_buffer(view)) % hashing.ALIGN == 0
