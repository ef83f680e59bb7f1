"""What every command of the application layer shares: the Io it talks to the shell through, the
Outcome it returns, the target's lock, and which pod's run a command means.

An application function (`migrate`, `attach`, `rollback`, `verify`, `purge`) takes one request value
(what the user asked) and an Io, and returns an Outcome: its exit code and the values its output
shows (views/outcome.py renders its `--format json` document). It never prints and never exits;
errors a user can cause are raised as MigrateError (each with its exit code), as the shell reports them.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shlex
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator, List, Optional, Protocol, Tuple

from migrate.disk import fsops

from migrate.core.errors import BadInput, BadLog, MigrateError
from migrate.core.model import show

class Io(Protocol):
    """What an application function needs of the shell (cli.py passes its Ui; a library caller Quiet).

    info/debug/warn: a message on stderr (debug only under -v); verbosity: -q < 0 < -v.
    progress(desc): a context giving (on_total, on_bytes) callbacks that drive a progress bar.
    show(what): what the command shows before it asks (a plan's summary, what a rollback or a purge will
    do), as the command shows it. confirm(question): ask; raises NotConfirmed when the answer is no (or
    no one can answer). The request's `yes` says whether an application function asks at all.
    """
    verbosity: int

    def info(self, msg: str) -> None: ...

    def debug(self, msg: str) -> None: ...

    def warn(self, msg: str) -> None: ...

    def progress(self, desc: str) -> ContextManager[Tuple[Callable[[int], None], Callable[[int], None]]]: ...

    def show(self, what: Any) -> None: ...

    def confirm(self, question: str) -> None: ...


class Quiet:
    """An Io that says nothing and asks no one: what a library caller (or an in-process test) passes.
    Messages are kept in `said` (level, text); confirm answers yes."""

    def __init__(self, verbosity: int = 0) -> None:
        self.verbosity = verbosity
        self.said: List[Tuple[str, str]] = []

    def info(self, msg: str) -> None:
        self.said.append(("info", msg))

    def debug(self, msg: str) -> None:
        self.said.append(("debug", msg))

    def warn(self, msg: str) -> None:
        self.said.append(("warning", msg))

    @contextlib.contextmanager
    def progress(self, desc: str) -> Iterator[Tuple[Callable[[int], None], Callable[[int], None]]]:
        yield (lambda n: None), (lambda n: None)

    def show(self, what: Any) -> None:
        pass

    def confirm(self, question: str) -> None:
        self.said.append(("asked", question))


@dataclass(frozen=True)
class Outcome:
    """What a command did: its documented exit code (errors.ExitCode) and, in each command's subclass,
    the values its output shows. views/outcome.py makes the document `--format json` prints of it
    (`command` says which); the shell prints the text."""
    exit_code: int

    command = ""


def state_dir(target: str) -> str:
    from migrate.core.model import STATE_DIR
    return os.path.join(target, STATE_DIR)


def take_lock(io: Io, target: str, purpose: str, wait: float, room: bool = False):
    """The target's lock, waiting for another pod's run (and saying whose) up to `wait` seconds."""
    from migrate.disk.lock import TargetLock

    def on_wait(h: dict) -> None:
        if not h.get("host"):       # garbage, or being written: taken over once it stays so a moment
            io.info(f"waiting for the target's lock: {os.path.join(state_dir(target), 'lock')} names no holder "
                    "(being written, or corrupt: taken over in a few seconds)")
            return
        io.info(f"waiting for the target's lock: {h.get('purpose', 'a run')} of pid {h.get('pid', '?')} on host "
                f"{h.get('host', '?')} holds it since {h.get('started', '?')} (up to {wait:.0f} s; --wait)")

    try:
        lock = TargetLock(state_dir(target), purpose).acquire(wait, on_wait)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            # Refused before anything changed: not "exit 1, `run` continues this run" (no run began).
            why = "a read-only filesystem" if exc.errno == errno.EROFS else "no write permission"
            raise BadInput(f"the target {show(target)} is not writable ({why} at {show(exc.filename or target)}): "
                           f"{purpose} takes the lock in {show(state_dir(target))} first",
                           "make the store writable (or remount the volume read-write), then run it again") from None
        # A full store: a rollback may use the reserve each run keeps (fsops.keep_reserve) for its lock
        # and log; `run` and `purge` may not (free space first), so that the rollback always can.
        if not (room and exc.errno in fsops.FULL_ERRNOS and fsops.release_reserve(state_dir(target))):
            raise
        io.debug("the store is full: released the rollback reserve")
        lock = TargetLock(state_dir(target), purpose).acquire(wait, on_wait)
    if lock.took_over:
        io.warn(f"took over a stale lock ({lock.took_over.get('reason')})")
    return lock


def clear_stale_lock(io: Io, target: str) -> None:
    """Nothing to do under the lock: still remove one a killed run or rollback left behind."""
    from migrate.disk.lock import TargetLock
    if os.path.isdir(state_dir(target)):
        why = TargetLock(state_dir(target), "cleanup").clear_stale()
        if why:
            io.info(f"removed a stale lock ({why})")


def require_store(target: str, what: str = "no runs in") -> str:
    """Read-only commands on a folder no run ever used say so (exit 6) rather than 'no runs yet'."""
    from migrate.core.model import STATE_DIR
    if not os.path.isdir(os.path.join(target, STATE_DIR)):
        raise BadLog(f"{what} {target} (it has no {STATE_DIR} folder): is --target right?",
                     "pass the store's folder as --target (default: $COMFY_MIGRATE_TARGET, else /workspace/models)")
    return target


def pod_log(io: Io, target: str, comfyui: Optional[str], live: bool, all_logs: bool = False,
            yaml: Optional[str] = None):
    """The log of this pod's newest run (live: not rolled back; all_logs: the logs of all its runs, oldest
    first). A pod is its ComfyUI folder's YAML on the volume, not its host name (a redeploy gives a
    new one): verify.pod_runs decides."""
    from migrate.disk.facts import find_comfyui
    from migrate.disk.journal import RUNS_DIR
    from migrate.core.model import STATE_DIR
    from migrate.disk.runlog import NothingToRollBack, all_runs, run_state
    from migrate.app.verify import pod_runs
    try:
        home = find_comfyui(comfyui)
    except MigrateError:
        if comfyui:
            raise
        home = None
    yaml_path = os.path.abspath(yaml) if yaml else os.path.join(home, "extra_model_paths.yaml") if home else None
    host = os.uname().nodename
    logs = os.path.join(target, STATE_DIR, RUNS_DIR)
    every = all_runs(target)
    # As verify finds them (issue 21): after a redeploy the host name is new, the YAML path and the
    # sources are this pod's still.
    mine, how = pod_runs(every, target, yaml_path, host)
    if not mine:
        raise BadLog((f"no run of this pod in {logs}: none wrote {yaml_path}, has its sources here or ran on this host ({host})"
                      if yaml_path else f"no run of this host ({host}) in {logs}; the runs there are other pods'")
                     if every else f"no run to roll back in {logs}" if live else
                     f"no run yet in {logs}: nothing to check or purge",
                     "pass --comfyui DIR, or name the run (see `comfy-migrate history --target DIR`)")
    if all_logs:       # purge: the logs of all this pod's runs, oldest first
        return [os.path.join(logs, f"{rid}.jsonl") for rid, _ in mine]
    pick = mine[-1][0]
    if live:      # the newest not rolled back; a log that does not read is picked (and then refused)
        def rolled_back(rid: str) -> bool:
            try:
                return run_state(os.path.join(logs, f"{rid}.jsonl")) == "rolled back"
            except BadLog:
                return False
        pick = next((rid for rid, _ in reversed(mine) if not rolled_back(rid)), "")
        if not pick:
            # A run of this host that wrote another YAML (`run --yaml X`) is not this YAML's pod, but
            # "rolled back already" would be untrue for it: name it and the option that picks it.
            others = [(rid, rec[0].yaml) for rid, rec in every if rec[0].host == host
                      and rec[0].yaml and yaml_path and os.path.realpath(rec[0].yaml) != os.path.realpath(yaml_path)
                      and not rolled_back(rid)]
            if others:
                rid, other = others[-1]
                raise BadLog(f"every run that wrote {yaml_path} is rolled back already, but run {rid} of this host "
                             f"wrote {other} and is not", f"comfy-migrate rollback --yaml {shlex.quote(other)} "
                             f"--target {shlex.quote(target)} (or name the run: comfy-migrate rollback {rid})")
            raise NothingToRollBack(f"every run of this pod in {target} is rolled back already")
    io.debug(f"this pod's newest run: {pick} ({how})")
    return os.path.join(logs, f"{pick}.jsonl")


def find_run_logs(io: Io, target: str, run_ref: Optional[str], comfyui: Optional[str], live: bool,
                  all_logs: bool = False, yaml: Optional[str] = None, none_here: str = "no runs in") -> List[str]:
    """The logs of the runs a request on the store at `target` (resolved) means, for purge and rollback:
    refused (exit 6) when no run ever used the folder (require_store: `none_here`); the run named
    (run_ref: a run id or a log path), else this pod's (pod_log: its newest, live: not rolled back;
    all_logs: every one, oldest first)."""
    from migrate.disk.runlog import find_log
    require_store(target, none_here)
    if run_ref:
        return [find_log(target, run_ref)]
    found = pod_log(io, target, comfyui, live=live, all_logs=all_logs, yaml=yaml)
    return found if all_logs else [found]


def given(comfyui: Optional[str], sources, yaml_path: Optional[str], target: Optional[str]) -> str:
    """' --comfyui C --source S --yaml Y --target T' of what this command was given (target: as
    resolved), so a printed command acts on this pod and store, never on the defaults under /workspace."""
    parts = []
    if comfyui:
        parts += ["--comfyui", os.path.abspath(comfyui)]
    for src in sources or ():
        parts += ["--source", os.path.abspath(src)]
    if yaml_path:
        parts += ["--yaml", os.path.abspath(yaml_path)]
    if target:
        parts += ["--target", target]
    return "".join(" " + shlex.quote(show(p)) for p in parts)
