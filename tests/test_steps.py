"""The one step type (migrate/core/steps.py): every module asks it, none keeps a list of op names."""
from __future__ import annotations

import ast
import os
import socket
from pathlib import Path

from migrate.app import rollback
from migrate.disk.journal import Journal, load_log
from migrate.core.model import STATE_DIR
from migrate.core.steps import PLACES, PLACES_FILE, REMOVES_SOURCE, Op

ROOT = Path(__file__).resolve().parent.parent


def _op_literals(tree: ast.AST) -> list:
    """String literals naming a step that a module compares with an op, lists as a set of ops, keys a
    table by, or passes as the op of a journalled step."""
    names = {o.value for o in Op}

    def is_op(n: ast.AST) -> bool:
        return ((isinstance(n, ast.Name) and n.id == "op") or (isinstance(n, ast.Attribute) and n.attr == "op")
                or (isinstance(n, ast.Subscript) and getattr(n.slice, "value", n.slice) == "op")
                or (isinstance(n, ast.Subscript) and isinstance(getattr(n.slice, "value", n.slice), ast.Constant)
                    and getattr(n.slice, "value", n.slice).value == "op")
                or (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get"
                    and bool(n.args) and isinstance(n.args[0], ast.Constant) and n.args[0].value == "op"))

    def consts(n: ast.AST) -> list:
        if isinstance(n, ast.Constant) and n.value in names:
            return [n]
        if isinstance(n, (ast.Tuple, ast.Set, ast.List)) and n.elts and all(
                isinstance(e, ast.Constant) and e.value in names for e in n.elts):
            return list(n.elts)
        return []
    found = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Compare) and any(is_op(s) for s in (n.left, *n.comparators)):
            found += [c.value for s in (n.left, *n.comparators) for c in consts(s)]
        elif isinstance(n, (ast.Tuple, ast.Set, ast.List)) and len(consts(n)) >= 2:
            found += [c.value for c in consts(n)]
        elif isinstance(n, ast.Dict) and sum(isinstance(k, ast.Constant) and k.value in names for k in n.keys) >= 3:
            found += [k.value for k in n.keys if isinstance(k, ast.Constant)]
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "begin" and n.args \
                and isinstance(n.args[0], ast.Constant) and n.args[0].value in names:
            found.append(n.args[0].value)
    return found


def test_no_module_but_steps_names_the_ops():
    """Adding a step means adding it to steps.Op: no other module may classify ops by name (there were
    98 such literals in catalogue, execute, facts, fleet, rollback and verify, two sets of them named
    PLACING that disagreed)."""
    bad = {}
    files = sorted((ROOT / "migrate").rglob("*.py"))
    assert len(files) >= 35 and (ROOT / "migrate" / "core" / "steps.py") in files
    for path in files:
        if path.name != "steps.py":
            found = _op_literals(ast.parse(path.read_text()))
            if found:
                bad[str(path.relative_to(ROOT))] = found
    assert not bad, f"op names outside migrate/core/steps.py: {bad}"


def test_the_log_format_and_the_classification():
    # The names are the log's format: a log written by any version reads back.
    assert [o.value for o in Op] == ["mkdir", "link", "dedupe", "symlink", "rename", "copy", "yaml", "unlink",
                                     "quarantine", "linkback", "relink", "drop-kept"]
    assert Op("copy") is Op.COPY and Op.of({"op": "copy"}) is Op.COPY and Op.of({"op": "attach?"}) is None
    assert PLACES_FILE < PLACES and PLACES - PLACES_FILE == {Op.SYMLINK}       # a name, not a file
    assert not PLACES & REMOVES_SOURCE
    assert all(o.places for o in Op if o.stores_source or o.keeps_source_ino)
    # never "the source is back at ..." before it is (issue 20): the undo removes the copy once it is
    assert Op.COPY.describe_undo({"dst": "/t/a", "src": "/s/a"}) == "remove the copy /t/a once /s/a holds the source again"
    assert Op.MKDIR.describe_undo({}) == "remove folder None if empty"


def _log(path: Path, header: dict, records: list) -> list:
    j = Journal.create(str(path), header)
    for r in records:
        j.append(r)
    j.close()
    return load_log(str(path))


def test_a_symlink_another_run_relies_on_stays_in_the_store(tmp_path):
    """rollback's PLACING set lacked `symlink` (verify's had it): a dedupe made as a symlink (the
    store refuses hardlinks) was removed by its run's rollback even while another run's source was
    set aside trusting that name, leaving that pod's ComfyUI without the model. It is kept now,
    like any stored name another run relies on."""
    target, src = tmp_path / "store", tmp_path / "pod" / "models"
    (target / "vae").mkdir(parents=True)
    (src / "vae").mkdir(parents=True)
    (target / "vae" / "w.safetensors").write_bytes(b"w" * 100)
    os.symlink("w.safetensors", target / "vae" / "z.safetensors")
    (src / "vae" / "z.safetensors").write_bytes(b"w" * 100)
    st = os.lstat(src / "vae" / "z.safetensors")
    head = {"run": "A", "target": str(target), "sources": [str(src)], "host": socket.gethostname()}
    log = target / STATE_DIR / "runs" / "A.jsonl"
    log.parent.mkdir(parents=True)
    steps = [{"type": "begin", "step": 1, "op": "symlink", "to": "w.safetensors",
              "src": str(src / "vae" / "z.safetensors"), "dst": str(target / "vae" / "z.safetensors"),
              "size": 100, "digest": "d", "dev": st.st_dev, "ino": st.st_ino, "mode": 0o644,
              "mtime_ns": st.st_mtime_ns},
             {"type": "done", "step": 1}]
    records = _log(log, head, steps)
    undos = rollback.plan_rollback(records)
    assert [u.describe() for u in undos] == [f"remove symlink {target}/vae/z.safetensors"]
    relied = {"vae/z.safetensors": ["B"]}          # run B's source was set aside trusting this name
    assert rollback.users_of(undos[0], relied, str(target)) == ["B"]
    report = rollback.execute_rollback(str(log), records, undos, relied=relied)
    assert os.readlink(target / "vae" / "z.safetensors") == "w.safetensors"
    assert [p.path for p in report.kept] == [str(target / "vae" / "z.safetensors")]
    # Relied on by no one: the symlink goes.
    log2 = target / STATE_DIR / "runs" / "A2.jsonl"
    records = _log(log2, dict(head, run="A2"), steps)
    rollback.execute_rollback(str(log2), records, rollback.plan_rollback(records))
    assert not os.path.lexists(target / "vae" / "z.safetensors")


def test_one_identity_rule_says_what_changed(tmp_path):
    """identity.changes (git's match_stat_data): every field that differs, at the filesystem's
    precision, the device under a named policy; run, the digest cache and verify --quick use it."""
    from migrate.disk import identity
    from migrate.disk.hashing import matches, stamp
    f = tmp_path / "m.safetensors"
    f.write_bytes(b"x" * 10)
    os.utime(f, ns=(5_300_000_000, 5_300_000_000))
    st = os.lstat(f)
    seen = identity.observe(st)
    assert identity.changes(st, seen) == () and matches(st, stamp(st))
    other = seen._replace(dev=seen.dev + 1, ino=seen.ino + 1, size=11, mtime_ns=5_000_000_000)
    assert identity.changes(st, other) == ("dev", "inode", "size", "mtime")
    coarse = identity.Precision(10 ** 9, stable_inode=False)     # whole seconds, inodes not stable
    assert identity.changes(st, other, coarse, identity.Dev.IGNORE) == ("size",)
    assert identity.changes(st, identity.observe(st, ctime=True)._replace(ctime_ns=1)) == ("ctime",)
    assert not matches(st, stamp(st)[:4] + (1,))     # the digest cache: a ctime that moved


def test_every_step_a_run_logs_has_an_undo():
    """A new step without its inverse would be skipped by every rollback ('unknown step kind')."""
    from migrate.core.records import STEP_FIELDS
    assert set(rollback.UNDO) == set(Op) - {Op.DROP_KEPT} == set(STEP_FIELDS)


def _stat_comparisons(tree: ast.AST) -> list:
    """Equality comparisons of a file's stat identity fields (inode, size, mtime, ctime; the device
    where it is compared with another stat's), or of identity tuples (`.ident`, `_ino(...)`,
    `stamp(...)`, a cache hit's slice) in a module: each one a rule of its own for "same file"."""
    fields = {"st_ino", "st_size", "st_mtime_ns", "st_ctime_ns", "ident"}
    found = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Compare) and isinstance(n.ops[0], (ast.Eq, ast.NotEq)):
            sides = [n.left, *n.comparators]
            attrs = {x.attr for s in sides for x in ast.walk(s) if isinstance(x, ast.Attribute)}
            calls = {x.func.id for s in sides for x in ast.walk(s) if isinstance(x, ast.Call) and isinstance(x.func, ast.Name)}
            sliced = any(isinstance(x, ast.Subscript) and isinstance(x.slice, ast.Slice) for s in sides for x in ast.walk(s))
            if attrs & fields or calls & {"_ino", "stamp", "stat_key"} or (sliced and "hit" in ast.unparse(n)):
                found.append((n.lineno, ast.unparse(n)[:80]))
    return found


# Stat comparisons that are not "is this still the file": the filesystem probes (fsops measures what a
# filesystem keeps, and puts a killed probe's folder time back), the lock's check of its own file, the
# folder times rollback counts as it sets them, two names' sizes before their bytes are compared
# (sniff.same_file).
NOT_IDENTITY = {"disk/fsops.py": 6, "disk/lock.py": 2, "app/rollback.py": 1, "disk/sniff.py": 1}


def test_one_place_decides_same_file():
    """identity.compare is the one rule (issue 25): the digest cache's trust rule, the catalogue's, run's
    checks, rollback's inode checks, purge, verify, sniff and attach call it; before, 40 comparisons
    of stat fields or identity tuples in 10 modules each decided for themselves."""
    from migrate.disk import catalogue, hashing, identity
    bad = {}
    for path in sorted((ROOT / "migrate").rglob("*.py")):
        rel = str(path.relative_to(ROOT / "migrate"))
        if rel == "disk/identity.py":
            continue
        found = _stat_comparisons(ast.parse(path.read_text()))
        if len(found) > NOT_IDENTITY.get(rel, 0):
            bad[rel] = found
    assert not bad, f"stat identity compared outside identity.py: {bad}"
    st = os.stat(__file__)
    assert isinstance(hashing.stamp(st), identity.Observed) and isinstance(hashing.stat_key(st), identity.Observed)
    e = catalogue.Entry("a", st.st_size, st.st_mtime_ns, st.st_ino, "d", ctime_ns=st.st_ctime_ns)
    ident = catalogue.ident_of(st)
    assert catalogue.unchanged(e, ident, st.st_ctime_ns) and not catalogue.unchanged(e, ident, st.st_ctime_ns + 1)
    assert not catalogue.unchanged(e._replace(ctime_ns=None), ident, st.st_ctime_ns)     # never trusted
