"""PURE: what each step record of a run's log carries, per op, checked once when a log is loaded
for undoing (rollback.load_run), after its hash chain (journal.read_log) and its paths (check_log).

The undo of a step reads its record's fields by name; a log whose chain is intact but whose record
lacks one (or holds a text where a number belongs: edited and sealed again, or written by a version
that spelled it otherwise) is refused here, naming the line and the field, before the first undo,
instead of stopping a rollback half way with a KeyError. An op this version does not know is left to
rollback (it skips it, saying so); fields not listed are free (later versions add some).
"""
from __future__ import annotations

from migrate.core.errors import BadLog
from migrate.core.steps import Op

NUM = (int,)
TEXT = (str,)
TEXT_OR_NONE = (str, type(None))
NUM_OR_NONE = (int, type(None))

# The facts of a source file a placing or removing step logs: what its undo compares and restores.
_FILE = {"src": TEXT, "dst": TEXT, "size": NUM, "dev": NUM, "ino": NUM, "mode": NUM, "mtime_ns": NUM,
         "digest": TEXT_OR_NONE}

STEP_FIELDS = {
    Op.MKDIR: {"path": TEXT},
    Op.LINK: _FILE,
    Op.RENAME: _FILE,
    Op.COPY: {**_FILE, "tmp": TEXT},
    Op.DEDUPE: {**_FILE, "stored": TEXT},
    Op.SYMLINK: {**_FILE, "to": TEXT},
    Op.YAML: {"path": TEXT, "after_digest": TEXT},
    Op.UNLINK: _FILE,
    Op.QUARANTINE: {**_FILE, "q": TEXT},
    Op.LINKBACK: {"src": TEXT, "to": TEXT},
    Op.RELINK: {"src": TEXT, "to": TEXT, "old": TEXT},
}

# Fields some steps carry: checked where present. One name per meaning: `ino` is the source's inode,
# `stored_ino` the stored copy's (dedupe), `dst_ino` the published file's (done), `tmp_ino` a staged
# copy's (staged); steps.Op.placed_ino says which one is the file a step put at its `dst`.
OPTIONAL = {"stored": TEXT_OR_NONE, "stored_ino": NUM, "stored_dev": NUM, "tmp": TEXT, "dst": TEXT,
            "before": TEXT_OR_NONE, "before_digest": TEXT_OR_NONE, "before_mtime_ns": NUM_OR_NONE,
            "mtime_ns": NUM, "links": (list,)}
DONE_FIELDS = {"dst_ino": NUM, "dst_mtime_ns": NUM, "dst_dev": NUM}
STAGED_FIELDS = {"tmp_ino": NUM, "tmp_dev": NUM}


def _fits(value: object, kinds: tuple) -> bool:
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


def _check(rec: dict, required: dict, optional: dict, what: str, where: str) -> None:
    for name, kinds in required.items():
        if name not in rec:
            raise BadLog(f"{where}: {what} has no {name}", "the log was edited; restore the original")
    for name, kinds in {**optional, **required}.items():
        if name in rec and not _fits(rec[name], kinds):
            raise BadLog(f"{where}: {what}'s {name} is {type(rec[name]).__name__}, not "
                         f"{' or '.join('null' if k is type(None) else k.__name__ for k in kinds)}",
                         "the log was edited; restore the original")


def check_steps(records: list, path: str) -> None:
    """Refuse (BadLog) a run log a step record of which lacks a field its undo reads, or holds one of
    another type. Records of other kinds, and steps of ops this version does not know, pass."""
    for i, rec in enumerate(records, 1):
        kind = rec.get("type")
        where = f"{path}: line {i}"
        if kind == "begin" and "step" in rec:
            if not _fits(rec.get("step"), NUM):
                raise BadLog(f"{where}: a step without a number", "the log was edited; restore the original")
            op = Op.of(rec)
            if op in STEP_FIELDS:
                _check(rec, STEP_FIELDS[op], OPTIONAL, f"{op.value} step {rec['step']}", where)
        elif kind == "done" and "step" in rec:
            _check(rec, {}, DONE_FIELDS, f"step {rec['step']}'s done record", where)
        elif kind == "staged":
            _check(rec, {"tmp_ino": NUM}, STAGED_FIELDS, f"step {rec.get('step')}'s staged record", where)
