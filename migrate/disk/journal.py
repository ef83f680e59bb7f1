"""The append-only audit log: write-ahead records, fsync, reading, integrity checks.

One JSON object per line. Every record carries `seq`, `prev` (the previous record's `sum`) and
`sum` (xxh3-128 of the record's canonical JSON without `sum`), so an edited, removed or reordered
line is found and named. A final line without its newline is a crash's torn write: expected, and
dropped when the log is read or continued.
"""
from __future__ import annotations

import errno
import json
import os
import signal
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import xxhash

from migrate.core.errors import BadLog, MigrateError, NoSpace
from migrate.core.model import STATE_DIR

LOG_VERSION = 1
RUNS_DIR = "runs"


class JournalError(MigrateError):
    """The log cannot be written: the run stops before its next step."""


def _canonical(rec: dict) -> bytes:
    return json.dumps(rec, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _sum(rec: dict) -> str:
    body = {k: v for k, v in rec.items() if k != "sum"}
    return xxhash.xxh3_128(_canonical(body)).hexdigest()


def _crash_point() -> Tuple[Optional[int], bool]:
    """Test hook: COMFY_MIGRATE_CRASH_AT=N kills this process (SIGKILL) right after record N;
    COMFY_MIGRATE_CRASH_AT=torn:N kills it while it writes record N, with half of the line on the
    disk (what a kill, or a full disk, leaves: `torn:1` is a log holding no complete record).
    Returns (N, torn)."""
    value = os.environ.get("COMFY_MIGRATE_CRASH_AT") or ""
    torn = value.startswith("torn:")
    value = value[len("torn:"):] if torn else value
    return (int(value), torn) if value.isdigit() else (None, False)


def _ctrl_c_point() -> Optional[int]:
    """Test hook: COMFY_MIGRATE_CRASH_AT=int:N sends this process SIGINT (Ctrl-C) right after record N."""
    value = os.environ.get("COMFY_MIGRATE_CRASH_AT") or ""
    return int(value[4:]) if value.startswith("int:") and value[4:].isdigit() else None


class Journal:
    """An open log, positioned at its end."""

    def __init__(self, path: str, fd: int, seq: int, prev: str, again: str = "",
                 room: Optional[Callable[[], bool]] = None) -> None:
        self.path = path
        self.room = room        # called once when the disk is full: True if it freed room (the reserve)
        self.again = again or "`comfy-migrate run` (continues this run) or `comfy-migrate rollback` (undoes it)"
        self._fd = fd
        self.seq = seq
        self.prev = prev
        self._crash_at, self._crash_torn = _crash_point()
        self._ctrl_c_at = _ctrl_c_point()

    @classmethod
    def create(cls, path: str, header: dict, again: str = "", room: Optional[Callable[[], bool]] = None) -> "Journal":
        """A new log whose first record is `header`. If that record cannot be written (a full disk),
        the file is removed again: a log holding no complete record did nothing (journal before act),
        and leaving none behind keeps it from being mistaken for a damaged one.
        `again`: what to do once the cause is fixed, said when a record cannot be written.
        `room`: see __init__ (a rollback's log, which may use the store's reserve)."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            if not (exc.errno in (errno.ENOSPC, errno.EDQUOT) and room is not None and room()):
                raise
            fd = os.open(path, flags, 0o644)
        j = cls(path, fd, 0, "", again, room)
        try:
            j.append(dict(header, type="header", v=LOG_VERSION))
        except BaseException:
            j.close()
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return j

    @classmethod
    def reopen(cls, path: str, again: str = "", room: Optional[Callable[[], bool]] = None
               ) -> Tuple["Journal", List[dict], bool]:
        """Open an existing log to continue it; a torn final line is cut off first."""
        records, good_bytes, torn = read_log(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
        if torn:
            os.ftruncate(fd, good_bytes)
            os.fsync(fd)
        last = records[-1]
        return cls(path, fd, last["seq"], last["sum"], again, room), records, torn

    def append(self, rec: dict, sync: bool = True) -> dict:
        self.seq += 1
        rec = dict(rec, seq=self.seq, prev=self.prev)
        rec["sum"] = _sum(rec)
        line = _canonical(rec) + b"\n"
        if self._crash_torn and self.seq == self._crash_at:
            os.write(self._fd, line[:len(line) // 2])
            os.fsync(self._fd)
            os.kill(os.getpid(), signal.SIGKILL)
        view = memoryview(line)
        try:
            while view:
                try:
                    n = os.write(self._fd, view)
                except OSError as exc:
                    # A full disk: the reserve (a rollback's) makes room once; the line goes on where
                    # it stopped. A failed fsync is never retried (the kernel may have dropped pages).
                    room, self.room = self.room, None
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT) and room is not None and room():
                        continue
                    raise
                view = view[n:]
            if sync:
                os.fsync(self._fd)
        except OSError as exc:
            # Without a log no further step may be taken: stop here. What is done is recorded (a torn
            # line is dropped on the next read), so a re-run continues and a rollback undoes.
            self.seq -= 1
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            raise (NoSpace if full else JournalError)(
                f"cannot write the audit log {self.path}: {exc.strerror}; stopped before the next step",
                ("free space on the target, then " if full else "fix the target, then ") + self.again) from exc
        self.prev = rec["sum"]
        if self._crash_at is not None and not self._crash_torn and self.seq >= self._crash_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if self._ctrl_c_at is not None and self.seq == self._ctrl_c_at:
            # As at a terminal: a process started in the background (`cmd &`, nohup) ignores SIGINT.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.kill(os.getpid(), signal.SIGINT)
        return rec

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def run_logs(target: str) -> List[Tuple[str, str]]:
    """(file name, path) of each run's log in the target, oldest first (rollback logs left out)."""
    runs = os.path.join(target, STATE_DIR, RUNS_DIR)
    return [(n, os.path.join(runs, n)) for n in sorted(os.listdir(runs) if os.path.isdir(runs) else [])
            if n.endswith(".jsonl") and not n.endswith(".rollback.jsonl")]


class EmptyLog(BadLog):
    """A log without one whole record: its run died writing the header (or is writing it right
    now), before any step. It changed nothing: there is nothing to continue or undo."""


def read_log(path: str) -> Tuple[List[dict], int, bool]:
    """Records of a log, checked. Returns (records, bytes of whole lines, whether a torn tail was seen).

    Raises BadLog naming the first line that is not what the writer wrote; EmptyLog for a log cut
    off inside its first record (nothing, or the start of a JSON object without its newline).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise BadLog(f"cannot read the log {path}: {exc.strerror}", "check the path given")
    lines = data.split(b"\n")
    torn = lines[-1] != b""
    whole = lines[:-1]
    records: List[dict] = []
    prev = ""
    for i, raw in enumerate(whole, 1):
        where = f"{path}: line {i}"
        try:
            rec = json.loads(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise BadLog(f"{where} is not a log record", "the log was edited or damaged; restore it")
        if not isinstance(rec, dict) or rec.get("sum") != _sum(rec):
            raise BadLog(f"{where} was altered (checksum mismatch)", "the log was edited; restore the original")
        if rec.get("seq") != i or rec.get("prev") != prev:
            raise BadLog(f"{where} is out of order or a line before it is missing",
                         "the log was edited; restore the original")
        if i == 1 and (rec.get("type") != "header" or rec.get("v") != LOG_VERSION):
            raise BadLog(f"{where}: unknown log format version {rec.get('v')!r}",
                         "use the comfy-migrate version that wrote it")
        prev = rec["sum"]
        records.append(rec)
    if not records:
        if lines[-1] and not lines[-1].startswith(b'{"'):      # not what our writer starts a line with
            raise BadLog(f"{path}: line 1 is not a log record", "the log was edited or damaged; restore it")
        raise EmptyLog(f"{path} holds no complete record", "nothing to undo from this log")
    return records, len(data) - len(lines[-1]), torn


def read_begun(path: str) -> Optional[List[dict]]:
    """The records of a log that may not be there: None when it is missing or holds no complete
    record (its writer was killed, or refused by a full disk, before its first record reached the
    disk; that first record precedes every step, so such a log did nothing). A rollback log like
    that blocks nothing: the run is as if never rolled back, and the next rollback starts afresh.
    A damaged log still raises BadLog."""
    if not os.path.lexists(path):
        return None
    try:
        return read_log(path)[0]
    except EmptyLog:
        return None


def rollback_log_of(run_log: str) -> str:
    return run_log[:-len(".jsonl")] + ".rollback.jsonl"


@dataclass(frozen=True)
class Steps:
    """A log's step records grouped: begin record, its done record (if any) and extra records."""

    begins: Tuple[dict, ...]
    done: dict      # step number -> done record
    extra: dict     # step number -> list of other step records (staged, fail)


def group_steps(records: List[dict]) -> Steps:
    begins, done, extra = [], {}, {}
    for r in records:
        t = r.get("type")
        if t == "begin":
            begins.append(r)
        elif t == "done":
            done[r["step"]] = r
        elif t in ("staged", "fail"):
            extra.setdefault(r["step"], []).append(r)
    return Steps(tuple(begins), done, extra)


