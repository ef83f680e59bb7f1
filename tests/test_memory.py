"""Memory stays modest in file count: the peak RSS a JSON scan adds per file, measured in a
subprocess (memory, not time: allocations are deterministic enough to bound)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

FILES = 10_000
BUDGET = 2048          # bytes of peak RSS per scanned file; ~1.2 KiB measured, 2.6 KiB when the whole
                       # JSON document was built in memory


def peak_rss_kib(root: Path, env) -> int:
    code = ("import resource, sys\nfrom migrate.cli import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "sys.stderr.write('MAXRSS:%d' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    proc = subprocess.run([sys.executable, "-c", code, "scan", "--no-cache", "--source", str(root),
                           "--format", "json"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, check=True)
    return int(proc.stderr.rsplit("MAXRSS:", 1)[1])


def make_tree(root: Path, n: int) -> Path:
    for i in range(n):
        folder = root / "loras" / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        fd = os.open(folder / f"model-{i:06d}.safetensors", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, i.to_bytes(4, "little") * (1 + i % 16))
        os.close(fd)
    return root


def test_peak_memory_per_scanned_file_is_bounded(tmp_path, cli_env):
    small = peak_rss_kib(make_tree(tmp_path / "small", 10), cli_env)
    big = peak_rss_kib(make_tree(tmp_path / "big", FILES), cli_env)
    per_file = (big - small) * 1024 / FILES
    assert per_file < BUDGET, f"{per_file:.0f} bytes of peak RSS per file (budget {BUDGET})"


def test_streamed_scan_json_is_the_document_byte_for_byte(tmp_path):
    from migrate.views import report
    from migrate.disk.scan import hash_records, scan_tree
    a = tmp_path / "a"
    (a / "loras").mkdir(parents=True)
    (a / "loras" / "odd\nname \u00e9.safetensors").write_bytes(b"x" * 10)
    (a / "loras" / "b.part").write_bytes(b"y")
    (a / "stray.bin").write_bytes(b"z")
    os.symlink("/nowhere", a / "loras" / "link.safetensors")
    os.mkdir(os.fsencode(a / "vae"))
    open(os.fsencode(a / "vae") + b"/bad-\xff.safetensors", "wb").close()
    for n in range(7):
        (a / "vae" / f"m{n}.safetensors").write_bytes(bytes([n]) * 3)
    (tmp_path / "empty").mkdir()
    results = [hash_records(scan_tree(str(p)), None) for p in (a, tmp_path / "empty", a)]
    want = report.dumps(report.scan_doc(results))
    for batch in (1, 3, 1000):
        assert "".join(report.iter_scan_json(results, batch)) == want


def test_json_with_a_line_per_item_is_the_same_document(tmp_path):
    from migrate.views import report
    doc = {"version": 1, "groups": [{"digest": "ab", "size": 3, "copies": [["a\nb", "\u00e9\udcff"], ["c"]]}] * 3,
           "problems": [], "totals": {"groups": 3, "files": {"x": [1, None, True, 2.5]}}}
    text = report.dumps_lines(doc, ("groups", "problems"))
    assert json.loads(text) == json.loads(report.dumps(doc))
    lines = text.splitlines()
    assert lines[0] == "{" and lines[-1] == "}" and text.endswith("}\n")
    assert sum(line.startswith('    {"copies": ') for line in lines) == 3       # a group per line
    assert text.isascii()
