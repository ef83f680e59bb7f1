"""fsops.copy_and_hash through its aligned buffer: the bytes, the digest, the kept mode and mtime for
sizes around the chunk, and a failing write that surfaces in the caller with the temporary removed."""
from __future__ import annotations

import errno
import os

import pytest
import xxhash

from migrate.disk import fsops
from migrate.disk.hashing import stat_key

SIZES = [1, fsops.COPY_CHUNK - 1, fsops.COPY_CHUNK, 5 * fsops.COPY_CHUNK + 11]


def make(path, size: int) -> bytes:
    data = (xxhash.xxh3_128(str(size).encode()).digest() * (size // 16 + 1))[:size]
    path.write_bytes(data)
    os.chmod(path, 0o640)
    os.utime(path, ns=(1_600_000_000_123_456_789, 1_600_000_000_987_654_321))
    return data


@pytest.mark.parametrize("size", SIZES)
def test_copy_is_exact_and_hashed(tmp_path, size):
    src, tmp = tmp_path / "src.safetensors", tmp_path / ".dst.cm-tmp-x"
    data = make(src, size)
    digest, st = fsops.copy_and_hash(str(src), stat_key(os.stat(src)), str(tmp))
    assert digest == xxhash.xxh3_128(data).hexdigest()
    assert tmp.read_bytes() == data
    assert (st.st_mode & 0o777, st.st_mtime_ns) == (0o640, 1_600_000_000_987_654_321)


@pytest.mark.parametrize("size", SIZES[1:])
def test_a_failing_write_is_raised_and_the_temporary_removed(tmp_path, monkeypatch, size):
    src, tmp = tmp_path / "src.safetensors", tmp_path / ".dst.cm-tmp-x"
    make(src, size)
    real, written = fsops.write_all, [0]

    def write_all(fd, data):
        if written[0] + len(memoryview(data)) > size // 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written[0] += len(memoryview(data))
        real(fd, data)

    monkeypatch.setattr(fsops, "write_all", write_all)
    with pytest.raises(OSError) as exc:
        fsops.copy_and_hash(str(src), stat_key(os.stat(src)), str(tmp))
    assert exc.value.errno == errno.ENOSPC
    assert not tmp.exists()
    assert written[0] < size


@pytest.mark.parametrize("size", [fsops.FUSE_CHUNK - 1, fsops.FUSE_CHUNK + 3 * fsops.COPY_CHUNK + 5])
def test_copy_with_fuse_sized_writes_is_exact(tmp_path, size):
    src, tmp = tmp_path / "src.safetensors", tmp_path / ".dst.cm-tmp-x"
    data = make(src, size)
    digest, _ = fsops.copy_and_hash(str(src), stat_key(os.stat(src)), str(tmp), chunk=fsops.FUSE_CHUNK)
    assert digest == xxhash.xxh3_128(data).hexdigest() and tmp.read_bytes() == data


def test_copy_chunk_is_big_only_for_fuse():
    assert fsops.copy_chunk("fuse.mfs") == fsops.copy_chunk("fuse") == fsops.FUSE_CHUNK
    assert fsops.copy_chunk("ext4") == fsops.copy_chunk("tmpfs") == fsops.copy_chunk("unknown") == fsops.COPY_CHUNK


@pytest.mark.parametrize("fail_at", ["write", "interrupt"])
def test_a_piped_copy_stops_its_writer_before_it_returns(tmp_path, monkeypatch, fail_at):
    """A copy of many chunks that also computes SHA-256 and BLAKE3 writes on a second thread
    (fsops._copy_piped): whatever stops it (a failing
    write, an interrupt in the reading thread), that thread has ended when copy_and_hash returns, so no
    write reaches the descriptor once it is closed (its number may be reused at once), and no temporary
    is left."""
    import threading
    size = (fsops.PIPE_MIN + 8) * fsops.COPY_CHUNK + 5
    src, tmp = tmp_path / "src.safetensors", tmp_path / ".dst.cm-tmp-x"
    make(src, size)
    real, calls, after = fsops.write_all, [0], []
    closed = threading.Event()

    def write_all(fd, data):
        if closed.is_set():
            after.append(fd)
        calls[0] += 1
        if fail_at == "write" and calls[0] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    def on_bytes(n):
        if fail_at == "interrupt" and calls[0] >= 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(fsops, "write_all", write_all)
    with pytest.raises(OSError if fail_at == "write" else KeyboardInterrupt) as exc:
        fsops.copy_and_hash(str(src), stat_key(os.stat(src)), str(tmp), on_bytes=on_bytes, extra=True)
    closed.set()
    assert not [t for t in threading.enumerate() if t.name == "copy-writer"]
    assert not after and not tmp.exists()
    if fail_at == "write":
        assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(tmp)
