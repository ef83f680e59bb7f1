"""`purge`: empty the quarantine of a run (default: of every run of this pod) into the trash, or
delete it; a request in, an Outcome out. A file is freed only when both it and the stored copy it
was judged identical to hold the logged content, read now (rollback.purge_check)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from migrate.disk import fsops
from migrate.app.common import Io, Outcome, find_run_logs, take_lock
from migrate.core.errors import ExitCode
from migrate.core.model import human, show


@dataclass(frozen=True)
class PurgeRequest:
    """run_ref: one run (None: every run of this pod); permanent: delete instead of the trash;
    yes: do not ask; wait: seconds for the target's lock."""
    run_ref: Optional[str] = None
    target: Optional[str] = None
    comfyui: Optional[str] = None
    permanent: bool = False
    yes: bool = False
    wait: float = 900


@dataclass(frozen=True)
class PurgePreview:
    """What purge shows before it asks: per run, its quarantined files still there."""
    per_run: List[Tuple[str, List[dict]]]

    @property
    def files(self) -> int:
        return sum(len(qs) for _, qs in self.per_run)

    @property
    def size(self) -> int:
        return sum(q.size for _, qs in self.per_run for q in qs)


@dataclass(frozen=True)
class PurgeOutcome(Outcome):
    """state: 'empty' (nothing quarantined) or 'done'; per_run: (run id, its quarantined files) purged;
    freed: bytes freed; kept: {path, why} of each file kept; trash: the trash folders used (emptying
    them frees the space)."""
    state: str = "done"
    per_run: List[Tuple[str, List[dict]]] = field(default_factory=list)
    permanent: bool = False
    freed: int = 0
    kept: List[dict] = field(default_factory=list)
    trash: List[str] = field(default_factory=list)

    command = "purge"


def purge(req: PurgeRequest, io: Io) -> PurgeOutcome:
    """Free the quarantine (`comfy-migrate purge`): list it, ask, then under the lock re-hash each file
    and its stored copy and trash (or delete) those that still match."""
    from migrate.app.pod import resolve_target
    from migrate.app.rollback import purge_check
    from migrate.disk.runlog import load_run, quarantined
    target = resolve_target(req.target)
    logs = find_run_logs(io, target, req.run_ref, req.comfyui, live=False, all_logs=True)
    per_run = []
    for log in logs:
        records = load_run(log)
        items = [q for q in quarantined(records) if os.path.lexists(q.q)]
        if items:
            per_run.append((records[0].run, items))
    items = [q for _, qs in per_run for q in qs]
    if not items:
        return PurgeOutcome(ExitCode.OK, "empty", [], req.permanent)
    shown = PurgePreview(per_run)
    io.show(shown)
    if not req.yes:
        io.confirm(f"{'Delete' if req.permanent else 'Trash'} {len(items)} quarantined files "
                   f"({human(shown.size)}) of {len(per_run)} run(s)?")
    freed, kept, trash = 0, [], set()
    from migrate.app.pod import kept_reads
    with take_lock(io, target, "comfy-migrate purge", req.wait), kept_reads():
        for q in items:
            why = purge_check(q)
            if why:
                io.warn(f"{show(q.q)}: {why}; kept")
                kept.append({"path": q.q, "why": why})
                continue
            try:
                st = os.lstat(q.q)
                if req.permanent:
                    fsops.remove(q.q)
                else:
                    where = trash_of(q.q)
                    fsops.trash(q.q)
                    trash.add(where)
                if st.st_nlink == 1:      # its last name: the bytes are freed (two names count once)
                    freed += q.size
            except Exception as exc:   # send2trash raises many kinds; the file simply stays
                io.warn(f"{show(q.q)}: cannot use the trash ({exc}); kept "
                        "(use --permanent to delete instead)")
                kept.append({"path": q.q, "why": f"cannot use the trash ({exc})"})
    return PurgeOutcome(ExitCode.PROBLEMS if kept else ExitCode.OK, "done", per_run, req.permanent, freed, kept,
                        sorted(trash))


def trash_of(path: str) -> str:
    """The trash folder send2trash moves `path` into (its rule on Linux): the home's, under
    $XDG_DATA_HOME, for a file on the home folder's filesystem; else <mount>/.Trash/<uid> when that
    is a sticky folder, otherwise <mount>/.Trash-<uid>."""
    import stat as st_mod
    home_data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    dev = os.lstat(path).st_dev
    try:
        if os.stat(os.path.expanduser("~")).st_dev == dev:
            return os.path.join(home_data, "Trash")
    except OSError:
        pass
    top = os.path.realpath(os.path.dirname(path))
    while top != "/" and os.lstat(os.path.dirname(top)).st_dev == dev:
        top = os.path.dirname(top)
    shared = os.path.join(top, ".Trash")
    try:
        if os.path.isdir(shared) and not os.path.islink(shared) and os.stat(shared).st_mode & st_mod.S_ISVTX:
            return os.path.join(shared, str(os.getuid()))
    except OSError:
        pass
    return os.path.join(top, f".Trash-{os.getuid()}")
