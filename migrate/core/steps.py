"""PURE: the closed set of steps a run journals, each defined once (fclones' `FsCommand`).

A run's log names each step by its `op` (the strings below are the log format: never rename one).
Every question asked of a kind of step anywhere (does it put a name in the store? remove a
source? keep the source's inode?) is a property here; code elsewhere asks the step, never a list
of op names of its own. Adding a step (attach is next) means adding a member here and answering
each property for it, then its forward action (execute._Runner), its inverse (rollback.UNDO, one
function per op) and the fields its record carries (records.STEP_FIELDS); tests/test_steps.py checks
that no other module names ops and that every op has its undo and its fields.

    op            what the run did                                   undo
    mkdir         made a folder (the store's, a quarantine's)        remove it if empty
    link          hardlinked a source into the store                 remove that name (or move it back)
    rename        renamed a source into the store                    move it back
    copy          copied, verified and published a source            remove the copy (once the source is back)
    dedupe        hardlinked the stored copy of the same content     remove that name
    symlink       a symlink to the stored copy (no hardlinks)        remove the symlink
    yaml          rewrote extra_model_paths.yaml                     put the saved bytes back
    unlink        removed a source name the store holds as its inode  recreate it as a hardlink
    quarantine    set a source aside (purge frees it)                move it back
    linkback      left a symlink at a source's old place             remove the symlink
    relink        re-pointed a symlink of the sources                point it where it pointed
    drop-kept     (rollback only) took a file kept for this run out of the store
"""
from __future__ import annotations

from enum import Enum


class Op(str, Enum):
    """One kind of journalled step. A str: it equals its name in the log (`Op.LINK == "link"`), and a
    record's op reads back with `Op(rec["op"])`.

    Properties (each a question some module asks; answered once, per step):
      places            puts a name into the store that ComfyUI then loads (verify checks it, the
                        catalogue knows it, history counts it, rollback keeps it while others rely on it)
      places_file       ... and that name holds a file (an inode) the step itself put there:
                        "did this step happen?" is answered by the inode at its name (rollback.settle,
                        fleet.placed_by); a symlink is a name, not a file
      stores_source     the source's own bytes go into the store (not a dedupe of bytes stored already)
      keeps_source_ino  the stored name is the source's inode (the log's `ino` is the stored file's)
      removes_source    takes a source's name away (its content is in the store under `dst`)
      returns_source    its undo puts a source file back at its old name
      own_mtime         the stored file keeps the logged mtime (the source's inode, or a copy that keeps it)
      stages_temp       works through a temporary name (`tmp`) that an interruption may leave behind
      may_act_failed    may have changed the disk though its log says failed (a copy whose publish
                        succeeded and whose folder fsync then failed)
    """

    # value, places, places_file, stores_source, keeps_source_ino, removes_source, returns_source,
    # own_mtime, stages_temp, may_act_failed, the undo's wording (fields of the step's record)
    MKDIR = ("mkdir", 0, 0, 0, 0, 0, 0, 0, 0, 0, "remove folder {path} if empty")
    LINK = ("link", 1, 1, 1, 1, 0, 0, 1, 0, 0, "remove {dst} (a hardlink of {src})")
    DEDUPE = ("dedupe", 1, 1, 0, 0, 0, 0, 0, 0, 0, "remove {dst} (a hardlink of {stored})")
    SYMLINK = ("symlink", 1, 0, 0, 0, 0, 0, 0, 0, 0, "remove symlink {dst}")
    RENAME = ("rename", 1, 1, 1, 1, 0, 1, 1, 0, 0, "move {dst} back to {src}")
    COPY = ("copy", 1, 1, 1, 0, 0, 0, 1, 1, 1, "remove the copy {dst} once {src} holds the source again")
    YAML = ("yaml", 0, 0, 0, 0, 0, 0, 0, 0, 0, "restore {path} to its previous bytes")
    UNLINK = ("unlink", 0, 0, 0, 0, 1, 1, 1, 0, 0, "recreate {src} as a hardlink of {dst}")
    QUARANTINE = ("quarantine", 0, 0, 0, 0, 1, 1, 0, 0, 0, "move {src} back from quarantine")
    LINKBACK = ("linkback", 0, 0, 0, 0, 0, 0, 0, 0, 0, "remove symlink {src}")
    RELINK = ("relink", 0, 0, 0, 0, 0, 0, 0, 1, 0, "point symlink {src} at {old} again")
    DROP_KEPT = ("drop-kept", 0, 0, 0, 0, 0, 0, 0, 0, 0, "remove {path}, kept in the store for this run")

    def __new__(cls, value: str, *flags):
        obj = str.__new__(cls, value)
        obj._value_ = value
        return obj

    def __init__(self, value: str, places: int, places_file: int, stores_source: int, keeps_source_ino: int,
                 removes_source: int, returns_source: int, own_mtime: int, stages_temp: int,
                 may_act_failed: int, undo_text: str) -> None:
        self.places = bool(places)
        self.places_file = bool(places_file)
        self.stores_source = bool(stores_source)
        self.keeps_source_ino = bool(keeps_source_ino)
        self.removes_source = bool(removes_source)
        self.returns_source = bool(returns_source)
        self.own_mtime = bool(own_mtime)
        self.stages_temp = bool(stages_temp)
        self.may_act_failed = bool(may_act_failed)
        self.undo_text = undo_text

    def __str__(self) -> str:       # as in the log
        return self.value

    def describe_undo(self, rec: dict) -> str:
        """The undo of this step, in words, with the paths of its record (None where one is missing)."""
        return self.undo_text.format_map(_Fields(rec))

    def placed_ino(self, rec: dict) -> "int | None":
        """The inode number of the file this step put at its `dst`, by one name for what the log
        spells `ino`, `stored_ino`, `dst_ino` or `tmp_ino` (a step record merged with its done and
        staged records): the source's (link, rename), the stored copy's (dedupe), the copy's as
        observed after its publish, else as staged (copy). None for a step that places no file."""
        if not self.places_file:
            return None
        if self.keeps_source_ino:
            return rec.get("ino")
        if self is Op.DEDUPE:
            return rec.get("stored_ino")
        return rec.get("dst_ino") or rec.get("tmp_ino")

    @classmethod
    def of(cls, rec: dict) -> "Op | None":
        """The op of a log record (None for a record without one, or of a kind this version does not know)."""
        try:
            return cls(rec.get("op"))
        except ValueError:
            return None


class _Fields(dict):
    def __missing__(self, key: str) -> None:
        return None


def ops(prop: str) -> frozenset:
    """Every op with the property `prop` (e.g. ops("places")): a set to test a logged op string against."""
    return frozenset(o for o in Op if getattr(o, prop))


PLACES = ops("places")
PLACES_FILE = ops("places_file")
STORES_SOURCE = ops("stores_source")
KEEPS_SOURCE_INO = ops("keeps_source_ino")
REMOVES_SOURCE = ops("removes_source")
RETURNS_SOURCE = ops("returns_source")
OWN_MTIME = ops("own_mtime")
STAGES_TEMP = ops("stages_temp")
