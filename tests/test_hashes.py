"""SHA-256 and BLAKE3 computed in the same read as xxh3 (issue 24): each equals what `sha256sum`, the
`blake3` package (and `b3sum`, where installed) say, on every path that reads a file's bytes (hash_path,
hash_many's small and large paths, copy_and_hash); the digest cache carries all three under the same
trust rule; `--hashes xxh3` computes xxh3 alone."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import blake3
import pytest
import xxhash

from migrate.disk import fsops, hashing
from migrate.disk.hashing import DigestCache, hash_many, hash_path, stamp, stat_key

MiB = 1 << 20
SIZES = {"0B": 0, "1B": 1, "1MiB+1": MiB + 1, "9MiB+7": 9 * MiB + 7, "40MiB+3": 40 * MiB + 3}


def payload(size: int) -> bytes:
    block = hashlib.sha256(b"seed").digest() * 2048          # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def sha256sum(path: Path) -> str:
    return subprocess.run(["sha256sum", str(path)], check=True, capture_output=True, text=True).stdout.split()[0]


def b3(path: Path) -> str:
    h = blake3.blake3()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MiB), b""):
            h.update(chunk)
    if shutil.which("b3sum"):
        assert subprocess.run(["b3sum", "--no-names", str(path)], check=True, capture_output=True,
                              text=True).stdout.strip() == h.hexdigest()
    return h.hexdigest()


def expected(path: Path) -> tuple:
    data_x = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MiB), b""):
            data_x.update(chunk)
    return (data_x.hexdigest(), sha256sum(path), b3(path))


@pytest.fixture(autouse=True)
def _all_hashes():
    hashing.set_hashes("all")
    hashing._EXTRAS.clear()
    yield
    hashing.set_hashes("all")


@pytest.mark.parametrize("name", sorted(SIZES))
def test_every_read_gives_sha256sum_and_blake3_digests(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(payload(SIZES[name]))
    want = expected(path)
    assert hash_path(str(path), stat_key(os.lstat(path))) == want[0]
    assert hashing.extras(want[0]) == want[1:]
    hashing._EXTRAS.clear()
    [(digest, err)] = hash_many([(str(path), stamp(os.lstat(path)))])
    assert err is None and digest == want[0] and hashing.extras(digest) == want[1:]
    hashing._EXTRAS.clear()
    st = os.lstat(path)
    digest, _ = fsops.copy_and_hash(str(path), stat_key(st), str(tmp_path / "copy"))
    assert digest == want[0] and hashing.extras(digest) == want[1:]


def test_hash_many_mixes_small_and_large_files(tmp_path):
    paths = []
    for i, size in enumerate([5, MiB + 1, 9 * MiB + 7, 40 * MiB + 3, 0]):
        p = tmp_path / f"f{i}"
        p.write_bytes(payload(size) + bytes([i]))
        paths.append(p)
    got = hash_many([(str(p), stamp(os.lstat(p))) for p in paths])
    for p, (digest, err) in zip(paths, got):
        want = expected(p)
        assert err is None and digest == want[0] and hashing.extras(digest) == want[1:]


@pytest.mark.slow
def test_a_4_gib_sparse_file(tmp_path):
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.seek(4 << 30)
        f.write(b"end")
    want = expected(path)
    assert hash_path(str(path), stat_key(os.lstat(path))) == want[0]
    assert hashing.extras(want[0]) == want[1:]


def test_xxh3_only_computes_no_other_hash(tmp_path):
    path = tmp_path / "m"
    path.write_bytes(payload(MiB + 1))
    hashing.set_hashes("xxh3")
    digest = hash_path(str(path))
    assert digest == expected(path)[0] and hashing.extras(digest) is None


def _old(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    past = time.time_ns() - 10 * 10**9
    os.utime(p, ns=(past, past))
    return p


def test_cache_entries_carry_all_three_under_the_same_trust_rule(tmp_path):
    cache_path = str(tmp_path / "c.sqlite")
    p = _old(tmp_path, "m", payload(MiB + 1))
    time.sleep(0.3)     # ctime (set by utime) out of the racy window
    s = stamp(os.lstat(p))
    cache = DigestCache(cache_path)
    read_at = time.time_ns()
    digest = hash_path(str(p), s)
    cache.put(s, digest, read_at)
    cache.save()
    hashing._EXTRAS.clear()
    again = DigestCache(cache_path)
    assert again.get_all(s) == expected(p)
    # distrusted by the same rules: another ctime, size or mtime -> nothing, not even SHA-256
    hashing._EXTRAS.clear()
    assert DigestCache(cache_path).get_all(s[:4] + (s[4] + 1,)) is None
    assert hashing.extras(digest) is None
    assert DigestCache(cache_path).get_all(s[:3] + (s[3] + 1, s[4])) is None
    # racily clean: read in the same tick as the file's ctime
    fresh = DigestCache(str(tmp_path / "r.sqlite"))
    fresh.put(s, digest, s[4])
    fresh.save()
    assert DigestCache(str(tmp_path / "r.sqlite")).get_all(s) is None


def test_an_entry_read_before_has_xxh3_only_until_its_bytes_are_read_again(tmp_path):
    cache_path = str(tmp_path / "c.sqlite")
    p = _old(tmp_path, "m", payload(MiB + 1))
    time.sleep(0.3)
    s = stamp(os.lstat(p))
    hashing.set_hashes("xxh3")
    cache = DigestCache(cache_path)
    cache.put(s, hash_path(str(p), s), time.time_ns())
    cache.save()
    hashing.set_hashes("all")
    old = DigestCache(cache_path)
    assert old.get_all(s) == (expected(p)[0], None, None) and old.lacking() == 1
    with sqlite3.connect(cache_path) as con:
        assert con.execute("SELECT count(*) FROM digests2").fetchone() == (1,)
    # the next read of its bytes fills them in, and the cache keeps them
    cache = DigestCache(cache_path)
    cache.put(s, hash_path(str(p), s), time.time_ns())
    cache.save()
    hashing._EXTRAS.clear()
    assert DigestCache(cache_path).get_all(s) == expected(p)


def test_a_run_stores_sha256_and_blake3_in_the_catalogue_and_the_cache(pod, cli_env):
    from conftest import run_cli
    run_cli(["run", *pod.args("--yes")], cli_env, check=1)
    lines = [json.loads(x) for x in (pod.target / ".comfy-migrate" / "catalogue.jsonl").read_text().splitlines()]
    entries = lines[1:]
    assert entries
    with_hashes = [e for e in entries if "sha256" in e]
    # every file the run read (placed by it, or hashed as stored) has its hashes in the same read
    assert len(with_hashes) == len(entries), [e["rel"] for e in entries if "sha256" not in e]
    for e in with_hashes:
        path = pod.target / e["rel"]
        assert (e["digest"], e["sha256"], e["blake3"]) == expected(path)
    with sqlite3.connect(cli_env["COMFY_MIGRATE_CACHE"]) as con:
        rows = dict((d, (a, b)) for d, a, b in con.execute("SELECT digest, sha256, blake3 FROM hashes3"))
    assert {e["digest"] for e in with_hashes} <= set(rows)


def test_hashes_xxh3_keeps_them_out(pod, cli_env):
    from conftest import run_cli
    run_cli(["--hashes", "xxh3", "run", *pod.args("--yes")], cli_env, check=1)
    entries = (pod.target / ".comfy-migrate" / "catalogue.jsonl").read_text().splitlines()[1:]
    assert entries and not any("sha256" in x for x in entries)


def _safetensors_with_meta(meta: dict, payload: bytes) -> bytes:
    raw = json.dumps({"__metadata__": meta,
                      "w": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}}).encode()
    return len(raw).to_bytes(8, "little") + raw + payload


def test_catalogue_command_lists_every_stored_file_with_the_ecosystems_hashes(pod, cli_env):
    import csv
    import io
    from conftest import past_racy_window, run_cli
    lora = pod.models / "loras" / "meta_lora.safetensors"
    lora.write_bytes(_safetensors_with_meta({"modelspec.hash_sha256": "0x" + "ab" * 32, "sshs_model_hash": "cd" * 32},
                                            payload(3 * MiB + 5)))
    past_racy_window()
    run_cli(["run", *pod.args("--yes")], cli_env, check=1)
    proc = run_cli(["catalogue", "--target", str(pod.target)], cli_env)
    rows = json.loads(proc.stdout)
    stored = sorted(str(p.relative_to(pod.target)) for p in pod.target.rglob("*")
                    if p.is_file() and ".comfy-migrate" not in p.parts)
    assert {r["path"] for r in rows} >= {s for s in stored if "/" in s and "put_" not in s}
    by_path = {r["path"]: r for r in rows}
    r = by_path["loras/meta_lora.safetensors"]
    x, sha, b3_ = expected(pod.target / r["path"])
    assert (r["category"], r["name"], r["size"]) == ("loras", "meta_lora.safetensors", lora.stat().st_size if lora.exists()
                                                     else (pod.target / r["path"]).stat().st_size)
    assert (r["xxh3"], r["sha256"], r["blake3"], r["autov2"]) == (x, sha, "blake3:" + b3_, sha[:10].upper())
    assert r["modelspec.hash_sha256"] == "0x" + "ab" * 32 and r["sshs_model_hash"] == "cd" * 32
    hashed = [r for r in rows if r["xxh3"]]
    assert len(hashed) >= len(rows) - 3
    for r in hashed:
        assert (r["xxh3"], r["sha256"], r["blake3"]) == (lambda e: (e[0], e[1], "blake3:" + e[2]))(
            expected(pod.target / r["path"]))
        assert r["autov2"] == r["sha256"][:10].upper()
    assert len(hashed) == len(rows) and "lack SHA-256/BLAKE3" not in proc.stderr
    proc = run_cli(["catalogue", "--target", str(pod.target), "--format", "csv"], cli_env)
    got = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [g["path"] for g in got] == [r["path"] for r in rows]
    assert got[0].keys() >= {"category", "name", "names", "size", "xxh3", "sha256", "blake3", "autov2",
                             "modelspec.hash_sha256", "sshs_model_hash"}
    # a new name linked by hand changes the file's ctime: the catalogue no longer vouches for it (the
    # digest cache's rule), so neither name shows hashes it cannot stand behind
    os.link(pod.target / "loras" / "meta_lora.safetensors", pod.target / "loras" / "again.safetensors")
    proc = run_cli(["catalogue", "--target", str(pod.target)], cli_env)
    assert "2 of" in proc.stderr and "lack SHA-256/BLAKE3 (2 not in the catalogue" in proc.stderr
    rows = {r["path"]: r for r in json.loads(proc.stdout)}
    assert rows["loras/again.safetensors"]["xxh3"] is None and rows["loras/meta_lora.safetensors"]["sha256"] is None
    assert rows["loras/meta_lora.safetensors"]["sshs_model_hash"] == "cd" * 32


def test_catalogue_names_every_name_of_the_same_bytes(pod, cli_env):
    from conftest import run_cli
    run_cli(["run", *pod.args("--yes")], cli_env, check=1)
    rows = json.loads(run_cli(["catalogue", "--target", str(pod.target)], cli_env).stdout)
    groups = {}
    for r in rows:
        if r["xxh3"]:
            groups.setdefault(r["xxh3"], set()).add(f"{r['category']}/{r['name']}")
    for r in rows:
        if r["xxh3"]:
            assert set(r["names"]) == groups[r["xxh3"]]


def test_audit_takes_sidecars_as_witnesses(pod, cli_env):
    from conftest import as_model, run_cli
    loras = pod.models / "loras"
    good = loras / "good.safetensors"
    good.write_bytes(as_model("good.safetensors", payload(2 * MiB + 1)))
    sha_good = hashlib.sha256(good.read_bytes()).hexdigest()
    (loras / "good.sha256").write_text(f"{sha_good.upper()}  good.safetensors\n")
    swapped = loras / "swapped.safetensors"
    swapped.write_bytes(as_model("swapped.safetensors", payload(MiB) + b"x"))
    other = hashlib.sha256(b"the file the page described").hexdigest()
    (loras / "swapped.civitai.info").write_text(json.dumps(
        {"files": [{"name": "swapped.safetensors", "hashes": {"SHA256": other.upper(), "AutoV2": other[:10]}},
                   {"name": "swapped-pruned.safetensors", "hashes": {"SHA256": sha_good}}]}))
    lm = loras / "lm.safetensors"
    lm.write_bytes(as_model("lm.safetensors", payload(5)))
    (loras / "lm.metadata.json").write_text(json.dumps({"sha256": hashlib.sha256(lm.read_bytes()).hexdigest()}))
    proc = run_cli(["audit", *pod.args("--format", "json")], cli_env, check=None)
    doc = json.loads(proc.stdout)
    mism = [f for f in doc["findings"] if f["kind"] == "sidecar-mismatch"]
    assert [f["path"] for f in mism] == [str(swapped)], mism
    assert "the download differs from the file its metadata describes" in mism[0]["message"]
    assert not any(f["kind"] == "sidecar-mismatch" and f["path"] in (str(good), str(lm)) for f in doc["findings"])
    assert sorted(doc["verified_upstream"]) == sorted([str(good), str(lm)])
    assert proc.returncode == 1
    text = run_cli(["audit", *pod.args()], cli_env, check=None).stdout
    assert "2 model(s) verified upstream" in text and "sidecar-mismatch" in text


def test_plan_says_how_many_contents_lack_sha256_and_blake3(pod, cli_env):
    from conftest import past_racy_window, run_cli
    past_racy_window()
    run_cli(["--hashes", "xxh3", "plan", *pod.args()], cli_env, check=None)
    proc = run_cli(["-v", "plan", *pod.args()], cli_env, check=None)
    assert "distinct contents have xxh3 only" in proc.stderr, proc.stderr
    run_cli(["plan", "--no-cache", *pod.args()], cli_env, check=None)


def test_verify_gives_files_stored_before_sha256_their_hashes_in_the_digest_cache(pod, cli_env):
    """A store made with --hashes xxh3 (files "read before this change"): `verify` reads their bytes and
    records SHA-256/BLAKE3 in the user's digest cache; `catalogue` (which reads no model's bytes) then
    finds them there."""
    from conftest import run_cli
    env = {**cli_env, "COMFY_MIGRATE_HASHES": "xxh3"}
    run_cli(["run", *pod.args("--yes")], env, check=1)
    before = json.loads(run_cli(["catalogue", "--target", str(pod.target)], cli_env).stdout)
    placed = [r for r in before if r["xxh3"]]
    assert placed and not any(r["sha256"] for r in before)
    with sqlite3.connect(cli_env["COMFY_MIGRATE_CACHE"]) as con:
        assert not con.execute("SELECT name FROM sqlite_master WHERE name = 'hashes3'").fetchall()
    time.sleep(0.3)                                  # past the racily clean window of the files' ctimes
    run_cli(["verify", *pod.args()], cli_env)
    # the cache now holds each verified file's three hashes, bound to its stat data
    cache = DigestCache(cli_env["COMFY_MIGRATE_CACHE"])
    hashing._EXTRAS.clear()
    with sqlite3.connect(cli_env["COMFY_MIGRATE_CACHE"]) as con:
        rows = dict((d, (a, b)) for d, a, b in con.execute("SELECT digest, sha256, blake3 FROM hashes3"))
    after = {r["path"]: r for r in json.loads(run_cli(["catalogue", "--target", str(pod.target)], cli_env).stdout)}
    verified = 0
    for r in placed:
        path = pod.target / r["path"]
        want = expected(path)
        got = cache.get_all(stamp(os.lstat(path)))
        if got is None or got[1] is None:
            continue                                 # a stored file no run of this pod claims: verify does not read it
        verified += 1
        assert got == want and rows[want[0]] == want[1:]
        # catalogue reads no model's bytes: its SHA-256 can only come from the cache's entry
        a = after[r["path"]]
        assert (a["xxh3"], a["sha256"], a["blake3"], a["autov2"]) == (want[0], want[1], "blake3:" + want[2],
                                                                        want[1][:10].upper())
    assert verified >= 3, verified


def test_audit_records_sha256_of_a_small_file_the_cache_knew_by_xxh3_only(pod, cli_env):
    """audit reads a small model whole for its content checks (where no cached verdict spares the read):
    SHA-256/BLAKE3 of that read go into the digest cache even when the cache already held the file's
    xxh3 (from a read with --hashes xxh3)."""
    from conftest import past_racy_window, run_cli
    tiny = pod.models / "loras" / "tiny.safetensors"
    tiny.write_bytes(_safetensors_with_meta({}, payload(3000)))
    past_racy_window()
    s = stamp(os.lstat(tiny))
    run_cli(["--hashes", "xxh3", "scan", "--comfyui", str(pod.comfyui)], cli_env)
    want = expected(tiny)
    assert DigestCache(cli_env["COMFY_MIGRATE_CACHE"]).get_all(s) == (want[0], None, None)
    run_cli(["audit", *pod.args()], cli_env, check=None)
    hashing._EXTRAS.clear()
    assert DigestCache(cli_env["COMFY_MIGRATE_CACHE"]).get_all(s) == want


def test_a_forked_child_hashes_with_a_pool_of_its_own(tmp_path):
    """A pool made before os.fork() has no threads in the child: the child's SHA-256 must not wait on
    it forever (torture's CLI children are forked after in-process runs; its enospc family hung)."""
    from migrate.disk import hashing
    f = tmp_path / "m.safetensors"
    f.write_bytes(os.urandom(3 << 20))
    want = hashlib.sha256(f.read_bytes()).hexdigest()
    hashing.set_hashes("all")
    d = hashing.hash_path(str(f))                 # makes the pool in this process
    assert hashing.extras(d)[0] == want
    hashing._EXTRAS.clear()
    pid = os.fork()
    if pid == 0:                                  # the child: exit 0 only if it hashed in time
        import signal
        signal.alarm(20)
        try:
            d2 = hashing.hash_path(str(f))
            os._exit(0 if hashing.extras(d2)[0] == want else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def _cache_rows(cli_env) -> tuple:
    with sqlite3.connect(cli_env["COMFY_MIGRATE_CACHE"]) as con:
        known = {(d, i): h for d, i, h in con.execute("SELECT dev, ino, digest FROM digests2")}
        try:
            more = {d: (a, b) for d, a, b in con.execute("SELECT digest, sha256, blake3 FROM hashes3")}
        except sqlite3.OperationalError:
            more = {}
    return known, more


def test_purge_records_the_files_it_rereads_with_all_three_hashes(pod, cli_env):
    """purge re-reads each quarantined file and its stored copy before freeing one: those reads go into
    the digest cache with SHA-256 and BLAKE3 (a store made with --hashes xxh3 had neither), as scan's,
    verify's and audit's do."""
    from conftest import past_racy_window, run_cli
    run_cli(["--hashes", "xxh3", "run", *pod.args("--yes")], cli_env, check=1)
    runs = list((pod.target / ".comfy-migrate" / "runs").glob("*.jsonl"))
    from migrate.disk.runlog import load_run, quarantined
    items = [q for r in runs if not r.name.endswith(".rollback.jsonl") for q in quarantined(load_run(str(r)))]
    assert items, "the pod's run quarantines nothing: no purge to test"
    stored = sorted({q.home for q in items})
    os.unlink(cli_env["COMFY_MIGRATE_CACHE"])
    past_racy_window()
    run_cli(["purge", "--target", str(pod.target), "--comfyui", str(pod.comfyui), "--yes", "--permanent"], cli_env)
    hashing._EXTRAS.clear()
    cache = DigestCache(cli_env["COMFY_MIGRATE_CACHE"])
    for path in stored:
        assert cache.get_all(stamp(os.lstat(path))) == expected(Path(path)), path


def test_rollback_records_the_copies_it_rereads_with_all_three_hashes(pod, other_fs, cli_env):
    """rollback re-reads a copy the run made before removing it (its bytes must be the run's): that read
    goes into the digest cache with SHA-256 and BLAKE3, keyed by the content's xxh3."""
    from conftest import past_racy_window, run_cli
    target = other_fs / "store"
    env = {**cli_env, "COMFY_MIGRATE_HASHES": "xxh3"}
    run_cli(["run", "--comfyui", str(pod.comfyui), "--target", str(target), "--yes"], env, check=None)
    copied = [json.loads(x) for r in (target / ".comfy-migrate" / "runs").glob("*.jsonl")
              for x in r.read_text().splitlines()]
    copied = [r for r in copied if r.get("type") == "begin" and r.get("op") == "copy"]
    assert copied
    want = {}
    for r in copied:
        x, s, b = expected(Path(r["dst"]))
        want[x] = (s, b)
    if os.path.exists(cli_env["COMFY_MIGRATE_CACHE"]):
        os.unlink(cli_env["COMFY_MIGRATE_CACHE"])
    past_racy_window()
    run_cli(["rollback", "--comfyui", str(pod.comfyui), "--target", str(target), "--yes"], cli_env)
    known, more = _cache_rows(cli_env)
    assert set(want) <= set(known.values())
    assert {d: more.get(d) for d in want} == want


def test_a_file_a_run_can_only_copy_gets_sha256_and_blake3_in_the_copys_read_where_writes_wait(tmp_path):
    """Into a store whose writes wait on a daemon or a network (FUSE: MooseFS, rclone, sshfs; NFS,
    SMB), a file whose size no other source file and no stored file has cannot be a duplicate, so
    the plan surely copies it: its scan reads xxh3 alone and the copy, which reads it anyway, computes
    SHA-256 and BLAKE3 while the store waits (scripts/moosefs_pod.py measures it on a real MooseFS).
    Files whose sizes meet another's (dedupe candidates) are not among them."""
    from migrate.disk.facts import copy_bound
    from migrate.disk.scan import scan_tree
    assert all(fsops.writes_wait(t) for t in ("fuse.mfs", "fuse.rclone", "fuse.sshfs", "fuse", "nfs4", "cifs"))
    assert not any(fsops.writes_wait(t) for t in ("ext4", "xfs", "tmpfs", "overlay", "btrfs", "exfat"))
    src, store = tmp_path / "models", tmp_path / "store"
    for rel, size in (("checkpoints/only.safetensors", 3000), ("loras/a.safetensors", 2000),
                      ("loras/b.safetensors", 2000), ("vae/v.safetensors", 1000)):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(os.urandom(size))
    (store / "vae").mkdir(parents=True)
    (store / "vae" / "stored.safetensors").write_bytes(os.urandom(1000))
    bound = copy_bound([scan_tree(str(src))], scan_tree(str(store)))
    got = {r.rel for r in scan_tree(str(src)).records if bound(r)}
    assert got == {"checkpoints/only.safetensors"}
    assert {r.rel for r in scan_tree(str(src)).records if copy_bound([scan_tree(str(src))], None)(r)} == {
        "checkpoints/only.safetensors", "vae/v.safetensors"}


def test_a_run_onto_a_local_filesystem_computes_all_three_in_the_scan(pod, other_fs, cli_env):
    """Onto tmpfs (or a local disk) a copy is as fast as the CPU: hashing moved into it would only add
    to it (1 GiB pod onto tmpfs: 1.44 s -> 1.63 s), so the scan computes all three for every file, and
    the catalogue holds sha256sum's and blake3's for each copy."""
    from conftest import run_cli
    big = 9 * MiB + 5                      # hashing.LARGE and above: a worker's file
    model = lambda data: _safetensors_with_meta({}, data)     # noqa: E731 (a valid file: not held back)
    (pod.models / "checkpoints" / "only_one.safetensors").write_bytes(model(payload(big)))
    (pod.models / "loras" / "twin_a.safetensors").write_bytes(model(payload(big + 1)))
    (pod.models / "loras" / "twin_b.safetensors").write_bytes(model(payload(big + 1)[::-1]))
    target = other_fs / "store"
    args = ["--comfyui", str(pod.comfyui), "--target", str(target)]
    done = run_cli(["-v", "run", "--no-cache", *args, "--yes"], cli_env, check=None)
    assert done.returncode in (0, 1), done.stderr
    assert "have xxh3 only" not in done.stderr, done.stderr
    entries = {e["rel"]: e for e in (json.loads(x) for x in
               (target / ".comfy-migrate" / "catalogue.jsonl").read_text().splitlines()[1:])}
    for rel in ("checkpoints/only_one.safetensors", "loras/twin_a.safetensors", "loras/twin_b.safetensors"):
        e = entries[rel]
        assert (e["digest"], e["sha256"], e["blake3"]) == expected(target / rel), rel
