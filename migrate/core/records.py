"""PURE: the records a run's log and a rollback's log hold, one frozen type per kind, with
`to_json` (what a writer appends: journal.Journal adds `seq`, `prev`, `sum`) and `from_json`.

A log is read in two steps: its hash chain (journal.read_log: an edited, removed or reordered line
is found) and then its records, typed here once (`load`): a record whose chain is intact but which
lacks a field its readers need (or holds a text where a number belongs: edited and sealed again, or
written by a version that spelled it otherwise) is refused, naming the line and the field (BadLog),
before any reader acts on it, instead of stopping a rollback half way with a KeyError. Readers then
use attributes, never keys. A record of a kind this version does not know is kept as `Other`, a step
of an op it does not know keeps its op as the logged text (rollback skips it, saying so); fields not
listed are free (later versions add some).

One name per meaning for a file's facts: a step record's `src_dev`/`src_ino` (with `size`, `mtime_ns`)
are its source's as scanned (logs of earlier versions spell them `dev`/`ino`: read as well), a
dedupe's `stored_dev`/`stored_ino` the stored copy's, a done record's `dst_*` the published file's own
stat, a staged record's `tmp_*` the verified copy's before its publish. `placed_ino` is the one
answer to "which inode did this step put at its `dst`".
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from migrate.core.errors import BadLog
from migrate.core.steps import Op

NUM = (int,)
TEXT = (str,)
FLAG = (bool,)
LIST = (list,)
MAP = (dict,)
TEXT_OR_NONE = (str, type(None))
NUM_OR_NONE = (int, type(None))
ANY = (object,)

EDITED = "the log was edited; restore the original"


def _fits(value: object, kinds: tuple) -> bool:
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds and object not in kinds)


def _kinds(kinds: tuple) -> str:
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


class Record:
    """Base of every record type. Subclasses are frozen dataclasses; `TYPE` is the record's `type`,
    `JSON` maps each attribute to (its name in the log, the JSON types it may hold, required?),
    `OLD` a name earlier versions wrote -> the attribute it is read into."""

    TYPE: ClassVar[str] = ""
    JSON: ClassVar[Dict[str, Tuple[str, tuple, bool]]] = {}
    OLD: ClassVar[Dict[str, str]] = {}

    def to_json(self) -> dict:
        out: dict = {"type": self.TYPE}
        for name, (key, _, required) in self.JSON.items():
            value = getattr(self, name)
            if value is None and not required:
                continue
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_json(cls, rec: Mapping, what: str = "") -> "Record":
        """The typed record of a log line (a dict); ValueError naming the field that is missing or of
        another type (load adds the line)."""
        what = what or f"a {cls.TYPE} record"
        values = {}
        for name, (key, kinds, required) in cls.JSON.items():
            old = next((o for o, n in cls.OLD.items() if n == name and o in rec), None)
            if key in rec:
                value = rec[key]
            elif old is not None:
                key, value = old, rec[old]
            elif required:
                raise ValueError(f"{what} has no {key}")
            else:
                continue
            if not _fits(value, kinds):
                raise ValueError(f"{what}'s {key} is {type(value).__name__}, not {_kinds(kinds)}")
            values[name] = tuple(value) if isinstance(value, list) else value
        if "seq" in {f.name for f in fields(cls)} and isinstance(rec.get("seq"), int):   # type: ignore[arg-type]
            values["seq"] = rec["seq"]
        return cls(**values)


def _json(**spec: Tuple[str, tuple, bool]) -> Dict[str, Tuple[str, tuple, bool]]:
    return spec


def _opt(kinds: tuple, key: str = "") -> tuple:
    return (key, kinds, False)


def _req(kinds: tuple, key: str = "") -> tuple:
    return (key, kinds, True)


def _named(spec: Dict[str, tuple]) -> Dict[str, Tuple[str, tuple, bool]]:
    return {name: (key or name, kinds, required) for name, (key, kinds, required) in spec.items()}


# --- a run's log ------------------------------------------------------------------------------------

_HEAD = dict(run=_opt(TEXT), tool=_opt(TEXT), argv=_opt(LIST), host=_opt(TEXT), pid=_opt(NUM), time=_opt(TEXT),
             sources=_req(LIST), target=_req(TEXT), yaml=_opt(TEXT_OR_NONE), yaml_real=_opt(TEXT),
             mode=_opt(TEXT), fs=_opt(MAP), kind=_opt(TEXT), comfyui=_opt(MAP))


@dataclass(frozen=True)
class Header(Record):
    """A run's first record: who ran what, where (the roots every path of the log lies in), and what
    the probes found of each root's filesystem (`fs`: identity.precisions reads it)."""

    TYPE: ClassVar[str] = "header"
    JSON: ClassVar[dict] = _named(dict(_HEAD, v=_opt(NUM)))
    target: str = ""
    sources: Tuple[str, ...] = ()
    run: str = ""
    tool: Optional[str] = None
    argv: Tuple[str, ...] = ()
    host: str = ""
    pid: Optional[int] = None
    time: str = ""
    yaml: Optional[str] = None
    yaml_real: Optional[str] = None
    mode: Optional[str] = None
    fs: Optional[dict] = None
    kind: Optional[str] = None       # "attach" for attach's runs; None: a run
    comfyui: Optional[dict] = None
    v: Optional[int] = None
    seq: int = 0


@dataclass(frozen=True)
class Resume(Record):
    """A continued run's record: the header's facts again (this process's probes), and whether a torn
    last line was dropped."""

    TYPE: ClassVar[str] = "resume"
    JSON: ClassVar[dict] = _named(dict(_HEAD, run=_opt(TEXT_OR_NONE), torn_tail_dropped=_opt(FLAG)))
    target: str = ""
    sources: Tuple[str, ...] = ()
    run: Optional[str] = None
    tool: Optional[str] = None
    argv: Tuple[str, ...] = ()
    host: str = ""
    pid: Optional[int] = None
    time: str = ""
    yaml: Optional[str] = None
    yaml_real: Optional[str] = None
    mode: Optional[str] = None
    fs: Optional[dict] = None
    kind: Optional[str] = None
    comfyui: Optional[dict] = None
    torn_tail_dropped: Optional[bool] = None
    seq: int = 0


@dataclass(frozen=True)
class DirTimes(Record):
    """Folders' mtimes before the run touched them (rollback gives them back)."""

    TYPE: ClassVar[str] = "dirtimes"
    JSON: ClassVar[dict] = _named(dict(dirs=_req(MAP)))
    dirs: Dict[str, int] = field(default_factory=dict)
    seq: int = 0


@dataclass(frozen=True)
class Links(Record):
    """Symlinked store folders on the way, with their text, before the first step (preflight.py)."""

    TYPE: ClassVar[str] = "links"
    JSON: ClassVar[dict] = _named(dict(dirs=_req(MAP)))
    dirs: Dict[str, str] = field(default_factory=dict)
    seq: int = 0


# The facts of a source file a placing or removing step logs: what its undo compares and restores.
_FILE = ("src", "dst", "size", "src_dev", "src_ino", "mode", "mtime_ns", "digest")
STEP_FIELDS: Dict[Op, Tuple[str, ...]] = {
    Op.MKDIR: ("path",),
    Op.LINK: _FILE,
    Op.RENAME: _FILE,
    Op.COPY: _FILE + ("tmp",),
    Op.DEDUPE: _FILE + ("stored",),
    Op.SYMLINK: _FILE + ("to",),
    Op.YAML: ("path", "after_digest"),
    Op.UNLINK: _FILE,
    Op.QUARANTINE: _FILE + ("q",),
    Op.LINKBACK: ("src", "to"),
    Op.RELINK: ("src", "to", "old"),
}


@dataclass(frozen=True)
class Step(Record):
    """A `begin` record: a step of a run, journalled (fsynced) before it acts. Which fields it holds
    depends on its op (STEP_FIELDS: required; the others where the op has them).

    Args:
        step: the step's number (its begin record's seq).
        op: its steps.Op (the logged text for an op this version does not know).
        src, dst: the source's path and its name in the store (relink: the symlink, the moved file).
        size, mtime_ns, mode, digest: the source as scanned (relink: the symlink's mtime).
        src_dev, src_ino: the source's device and inode as scanned, written `dev` and `ino`: the log's
            format every version reads (an older comfy-migrate on another pod of the store reads this
            log for what its rollback must keep).
        kind: the plan's action kind. tmp: a copy's (or relink's) temporary name.
        stored, stored_dev, stored_ino: the stored copy a dedupe links (or a removal trusted).
        to: a symlink's text. old: a relinked symlink's text before. q: the quarantine name.
        path: a folder made (mkdir) or the YAML. before, before_digest, after_digest, before_mtime_ns:
        the YAML's saved pre-image and digests. links: in-tree symlinks re-pointed with a removal.
        method: the plan's method this step tries; methods: the plan's ordered list of them (where
        more than one: each is tried where the one before was refused), fallback: the errno the
        method before was refused with.
    """

    TYPE: ClassVar[str] = "begin"
    JSON: ClassVar[dict] = _named(dict(
        step=_req(NUM), op=_req(TEXT), src=_opt(TEXT), dst=_opt(TEXT), size=_opt(NUM), src_dev=_opt(NUM, "dev"),
        src_ino=_opt(NUM, "ino"), mode=_opt(NUM), mtime_ns=_opt(NUM), digest=_opt(TEXT_OR_NONE), kind=_opt(TEXT),
        tmp=_opt(TEXT), stored=_opt(TEXT_OR_NONE), stored_dev=_opt(NUM), stored_ino=_opt(NUM), to=_opt(TEXT),
        old=_opt(TEXT), q=_opt(TEXT), path=_opt(TEXT), before=_opt(TEXT_OR_NONE), before_digest=_opt(TEXT_OR_NONE),
        after_digest=_opt(TEXT), before_mtime_ns=_opt(NUM_OR_NONE), links=_opt(LIST), method=_opt(TEXT),
        methods=_opt(LIST), fallback=_opt(TEXT)))
    step: int = 0
    op: Union[Op, str] = ""
    src: Optional[str] = None
    dst: Optional[str] = None
    size: Optional[int] = None
    src_dev: Optional[int] = None
    src_ino: Optional[int] = None
    mode: Optional[int] = None
    mtime_ns: Optional[int] = None
    digest: Optional[str] = None
    kind: Optional[str] = None
    tmp: Optional[str] = None
    stored: Optional[str] = None
    stored_dev: Optional[int] = None
    stored_ino: Optional[int] = None
    to: Optional[str] = None
    old: Optional[str] = None
    q: Optional[str] = None
    path: Optional[str] = None
    before: Optional[str] = None
    before_digest: Optional[str] = None
    after_digest: Optional[str] = None
    before_mtime_ns: Optional[int] = None
    links: Tuple[str, ...] = ()
    method: Optional[str] = None
    methods: Tuple[str, ...] = ()
    fallback: Optional[str] = None
    seq: int = 0

    @classmethod
    def from_json(cls, rec: Mapping, what: str = "") -> "Step":
        if not _fits(rec.get("step"), NUM):
            raise ValueError("a step without a number")
        op = Op.of(rec)
        what = f"{op.value if op else rec.get('op')} step {rec['step']}"
        if op is not None:
            for name in STEP_FIELDS[op]:
                key = cls.JSON[name][0]         # its name in the log
                if key not in rec:
                    raise ValueError(f"{what} has no {key}")
        out = super().from_json(rec, what)
        return out if op is None else out._with(op=op)       # type: ignore[return-value]

    def _with(self, **changes) -> "Step":
        from dataclasses import replace
        return replace(self, **changes)

    def to_json(self) -> dict:
        out = super().to_json()
        for empty in ("links", "methods"):
            if not getattr(self, empty):
                out.pop(empty, None)
        out["op"] = str(self.op)
        for name in STEP_FIELDS.get(self.op, ()):        # type: ignore[call-overload]
            out.setdefault(self.JSON[name][0], None)       # a required field holding null (a file without a digest)
        return out

    @property
    def known(self) -> Optional[Op]:
        """Its op, or None for an op this version does not know."""
        return self.op if isinstance(self.op, Op) else None

    @property
    def home(self) -> Optional[str]:
        """The stored name a removed source's content was trusted to (the stored copy, else its own `dst`)."""
        return self.stored or self.dst


@dataclass(frozen=True)
class Done(Record):
    """A step finished; for a placement, the published file's own stat (what later checks compare
    with: a filesystem with coarser times keeps a copy's mtime rounded)."""

    TYPE: ClassVar[str] = "done"
    JSON: ClassVar[dict] = _named(dict(step=_req(NUM), dst_ino=_opt(NUM), dst_dev=_opt(NUM),
                                       dst_mtime_ns=_opt(NUM)))
    step: int = 0
    dst_ino: Optional[int] = None
    dst_dev: Optional[int] = None
    dst_mtime_ns: Optional[int] = None
    seq: int = 0


@dataclass(frozen=True)
class Fail(Record):
    """A step failed (`step` 0: the YAML's write, outside a step)."""

    TYPE: ClassVar[str] = "fail"
    JSON: ClassVar[dict] = _named(dict(step=_req(NUM), error=_opt(TEXT)))
    step: int = 0
    error: str = ""
    seq: int = 0


@dataclass(frozen=True)
class Staged(Record):
    """A copy verified under its temporary name, before its publish: its inode."""

    TYPE: ClassVar[str] = "staged"
    JSON: ClassVar[dict] = _named(dict(step=_req(NUM), tmp_ino=_req(NUM), tmp_dev=_opt(NUM)))
    step: int = 0
    tmp_ino: int = 0
    tmp_dev: Optional[int] = None
    seq: int = 0


@dataclass(frozen=True)
class Cleanup(Record):
    """A continued run removed an interrupted copy's temporary file."""

    TYPE: ClassVar[str] = "cleanup"
    JSON: ClassVar[dict] = _named(dict(path=_req(TEXT), of_step=_opt(NUM)))
    path: str = ""
    of_step: Optional[int] = None
    seq: int = 0


@dataclass(frozen=True)
class Stopped(Record):
    """The disk filled: the run stopped, its log left open (continued by `run`, undone by `rollback`)."""

    TYPE: ClassVar[str] = "stopped"
    JSON: ClassVar[dict] = _named(dict(error=_opt(TEXT), placed=_opt(NUM), yaml_written=_opt(FLAG)))
    error: str = ""
    placed: int = 0
    yaml_written: bool = False
    seq: int = 0


@dataclass(frozen=True)
class Stayed(Record):
    """Conflicts left in place, as read: [path, size, mtime_ns, digest] each (attach compares by them)."""

    TYPE: ClassVar[str] = "stayed"
    JSON: ClassVar[dict] = _named(dict(files=_req(LIST)))
    files: Tuple[list, ...] = ()
    seq: int = 0


@dataclass(frozen=True)
class Names(Record):
    """What ComfyUI loads for each name it loaded before the run (verify checks it)."""

    TYPE: ClassVar[str] = "names"
    JSON: ClassVar[dict] = _named(dict(names=_req(LIST)))
    names: Tuple[list, ...] = ()
    seq: int = 0


@dataclass(frozen=True)
class Close(Record):
    """A run's last record: it ended (complete, or with per-file problems)."""

    TYPE: ClassVar[str] = "close"
    JSON: ClassVar[dict] = _named(dict(state=_opt(TEXT), placed=_opt(NUM), copied_bytes=_opt(NUM),
                                       removed=_opt(NUM), quarantine_bytes=_opt(NUM), problems=_opt(NUM)))
    state: str = ""
    placed: int = 0
    copied_bytes: int = 0
    removed: int = 0
    quarantine_bytes: int = 0
    problems: int = 0
    seq: int = 0


@dataclass(frozen=True)
class Unplaced(Record):
    """In memory only (rollback.settle): a placement begun, never finished, whose name holds another file."""

    TYPE: ClassVar[str] = "unplaced"
    JSON: ClassVar[dict] = _named(dict(step=_req(NUM), dst=_opt(TEXT)))
    step: int = 0
    dst: Optional[str] = None
    seq: int = 0


@dataclass(frozen=True)
class Other(Record):
    """A record of a kind this version does not know (a later version's): kept, read by no one."""

    TYPE: ClassVar[str] = ""
    type: str = ""
    raw: dict = field(default_factory=dict)
    seq: int = 0

    def to_json(self) -> dict:
        return dict(self.raw)


RUN_KINDS: Dict[str, type] = {c.TYPE: c for c in (Header, Resume, DirTimes, Links, Step, Done, Fail, Staged, Cleanup,
                                                   Stopped, Stayed, Names, Close, Unplaced)}


# --- a rollback's log -------------------------------------------------------------------------------

@dataclass(frozen=True)
class RbHeader(Record):
    """A rollback log's first record."""

    TYPE: ClassVar[str] = "header"
    JSON: ClassVar[dict] = _named(dict(run=_opt(TEXT), rollback_of=_req(TEXT), tool=_opt(TEXT), host=_opt(TEXT),
                                       time=_opt(TEXT), log_tail=_opt(TEXT), unbegun_log_dropped=_opt(NUM),
                                       v=_opt(NUM)))
    rollback_of: str = ""
    run: str = ""
    tool: Optional[str] = None
    host: str = ""
    time: str = ""
    log_tail: Optional[str] = None
    unbegun_log_dropped: Optional[int] = None
    v: Optional[int] = None
    seq: int = 0


@dataclass(frozen=True)
class RbResume(Record):
    TYPE: ClassVar[str] = "resume"
    JSON: ClassVar[dict] = _named(dict(pid=_opt(NUM), host=_opt(TEXT)))
    pid: Optional[int] = None
    host: str = ""
    seq: int = 0


_UNDO_ID = (int, str)       # a step number, or "drop:<rel>" (a kept file dropped)


@dataclass(frozen=True)
class UndoBegin(Record):
    """An undo about to act: the step it undoes (or a kept file's drop), its op, the drop's path."""

    TYPE: ClassVar[str] = "begin"
    JSON: ClassVar[dict] = _named(dict(undo=_req(_UNDO_ID), op=_req(TEXT), path=_opt(TEXT)))
    undo: Union[int, str] = 0
    op: str = ""
    path: Optional[str] = None
    seq: int = 0


@dataclass(frozen=True)
class UndoDone(Record):
    TYPE: ClassVar[str] = "done"
    JSON: ClassVar[dict] = _named(dict(undo=_req(_UNDO_ID)))
    undo: Union[int, str] = 0
    seq: int = 0


@dataclass(frozen=True)
class Skip(Record):
    """An undo that did not act, and why (a file changed since the run)."""

    TYPE: ClassVar[str] = "skip"
    JSON: ClassVar[dict] = _named(dict(undo=_req(_UNDO_ID), why=_opt(TEXT)))
    undo: Union[int, str] = 0
    why: str = ""
    seq: int = 0


@dataclass(frozen=True)
class Keep(Record):
    """A stored file left in the store for other runs relying on it (`rel`: store-relative)."""

    TYPE: ClassVar[str] = "keep"
    JSON: ClassVar[dict] = _named(dict(undo=_req(_UNDO_ID), path=_req(TEXT), users=_opt(LIST, "for"),
                                       rel=_opt(TEXT_OR_NONE), digest=_opt(TEXT_OR_NONE), size=_opt(NUM_OR_NONE)))
    undo: Union[int, str] = 0
    path: str = ""
    users: Tuple[str, ...] = ()
    rel: Optional[str] = None
    digest: Optional[str] = None
    size: Optional[int] = None
    seq: int = 0


@dataclass(frozen=True)
class Swept(Record):
    TYPE: ClassVar[str] = "swept"
    JSON: ClassVar[dict] = _named(dict(folders=_req(LIST)))
    folders: Tuple[str, ...] = ()
    seq: int = 0


@dataclass(frozen=True)
class Restored(Record):
    """How many folders got their mtime back (a rollback's `dirtimes` record)."""

    TYPE: ClassVar[str] = "dirtimes"
    JSON: ClassVar[dict] = _named(dict(restored=_opt(NUM)))
    restored: int = 0
    seq: int = 0


@dataclass(frozen=True)
class RbClose(Record):
    TYPE: ClassVar[str] = "close"
    JSON: ClassVar[dict] = _named(dict(undone=_opt(NUM), skipped=_opt(NUM), incomplete=_opt(NUM)))
    undone: int = 0
    skipped: int = 0
    incomplete: Optional[int] = None     # sources not back (the YAML kept): run rollback again
    seq: int = 0


ROLLBACK_KINDS: Dict[str, type] = {c.TYPE: c for c in (RbHeader, RbResume, UndoBegin, UndoDone, Skip, Keep, Swept,
                                                        Restored, RbClose)}


def load(records: Sequence[dict], path: str) -> List[Record]:
    """Type the records of a log whose hash chain is checked (journal.read_log), once: a run's log, or
    a rollback's (its header names the run it undoes). BadLog names the line and the field."""
    kinds = ROLLBACK_KINDS if records and "rollback_of" in records[0] else RUN_KINDS
    out: List[Record] = []
    for i, rec in enumerate(records, 1):
        cls = kinds.get(rec.get("type"))        # type: ignore[arg-type]
        if cls is None:
            out.append(Other(type=str(rec.get("type")), raw=dict(rec), seq=rec.get("seq") or 0))
            continue
        try:
            out.append(cls.from_json(rec))
        except ValueError as exc:
            raise BadLog(f"{path}: line {i}: {exc}", EDITED) from None
    return out


def of(records: Sequence[Record], cls: type) -> list:
    """The records of one type, in log order."""
    return [r for r in records if isinstance(r, cls)]


def last(records: Sequence[Record], cls: type):
    """The last record of one type, or None."""
    return next((r for r in reversed(records) if isinstance(r, cls)), None)


def heads(records: Sequence[Record]) -> list:
    """The header and every resume record (each process's facts of the run's roots)."""
    return [r for r in records if isinstance(r, (Header, Resume))]


@dataclass(frozen=True)
class Steps:
    """A run's step records grouped by step: begin records in log order, done, staged, failed."""

    begins: Tuple[Step, ...]
    done: Dict[int, Done]
    staged: Dict[int, Staged]       # the last staged record of a step
    failed: frozenset
    unplaced: frozenset

    def placed_ino(self, b: Step) -> Optional[int]:
        """The inode number of the file step `b` put at its `dst` (see `placed_ino`)."""
        return placed_ino(b, self.done.get(b.step), self.staged.get(b.step))


def placed_ino(b: Step, done: Optional[Done], staged: Optional[Staged]) -> Optional[int]:
    """The inode number of the file a step put at its `dst`, one answer for what the log spells
    `src_ino`, `stored_ino`, `dst_ino` or `tmp_ino`: the source's (link, rename), the stored copy's
    (dedupe), the copy's as observed after its publish, else as staged (copy). None for a step that
    places no file (a symlink is a name, not a file)."""
    op = b.known
    if op is None or not op.places_file:
        return None
    if op.keeps_source_ino:
        return b.src_ino
    if op is Op.DEDUPE:
        return b.stored_ino
    return (done.dst_ino if done is not None else None) or (staged.tmp_ino if staged is not None else None)


def group_steps(records: Sequence[Record]) -> Steps:
    begins, done, staged, failed, unplaced = [], {}, {}, set(), set()
    for r in records:
        if isinstance(r, Step):
            begins.append(r)
        elif isinstance(r, Done):
            done[r.step] = r
        elif isinstance(r, Staged):
            staged[r.step] = r
        elif isinstance(r, Fail):
            failed.add(r.step)
        elif isinstance(r, Unplaced):
            unplaced.add(r.step)
    return Steps(tuple(begins), done, staged, frozenset(failed), frozenset(unplaced))
