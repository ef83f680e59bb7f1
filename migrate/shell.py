"""The click-free half of the shell: messages, output, and `scan` (resolving the user's paths is
app/pod.py's, re-exported here for the shell).

cli.py wraps these functions in click commands. tqdm and tabulate are imported only when a
progress bar or a table is drawn.
"""
from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Callable, Iterator

from migrate.views import report
from migrate.app.pod import (adopt_comfyui, check_reachable, open_cache, open_verdicts, resolve_launch,  # noqa: F401
                             resolve_pod, resolve_sources, resolve_target)
from migrate.core.errors import ExitCode, MigrateError
from migrate.disk.hashing import DigestCache
from migrate.core.model import Status

TYPE_CHECKING = False
if TYPE_CHECKING:       # typing is not imported at run time: ~5-8 ms of scan's start-up
    from typing import NoReturn


def err(msg: str) -> None:
    """One line to stderr, at once (messages interleave with a progress bar there)."""
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


class Ui:
    def __init__(self, verbosity: int) -> None:
        self.verbosity = verbosity
        _UI.append(self)

    def info(self, msg: str) -> None:
        if self.verbosity >= 0:
            err(msg)

    def debug(self, msg: str) -> None:
        if self.verbosity > 0:
            err(msg)

    def warn(self, msg: str) -> None:
        err(f"warning: {msg}")

    @contextlib.contextmanager
    def progress(self, desc: str) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
        """(on_total, on_bytes) callbacks driving a tqdm bar on stderr, only on a TTY."""
        if self.verbosity < 0 or not sys.stderr.isatty():
            yield (lambda n: None), (lambda n: None)
            return
        from tqdm import tqdm
        bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr,
                   leave=False, mininterval=0.25)

        def on_total(n: int) -> None:
            bar.total = n
            bar.refresh()

        try:
            yield on_total, bar.update
        finally:
            bar.close()


TABLE_WIDTH = 120      # columns a table fits, unless -v (Ui.verbosity > 0) asks for every cell whole
_UI: list = []         # this process's Ui (its verbosity can change as the command's own -v is read)


def table(rows, headers, names: tuple = ()) -> str:
    """A plain table; wider than TABLE_WIDTH (not under -v), the widest of its `names` columns (names
    and paths: both ends matter) has its cells shortened in the middle until it fits or is down to 16."""
    from tabulate import tabulate
    rows = [["" if v is None else str(v) for v in r] for r in rows]
    if rows and names and not (_UI and _UI[-1].verbosity > 0):
        for _ in range(len(headers)):
            # tabulate pads each header by 2 (its MIN_PADDING)
            widths = [max([len(str(h)) + 2] + [len(r[i]) for r in rows if i < len(r)]) for i, h in enumerate(headers)]
            excess = sum(widths) + 2 * (len(widths) - 1) - TABLE_WIDTH
            col = max(names, key=lambda i: widths[i])
            room = max(16, widths[col] - excess)
            if excess <= 0 or room >= widths[col]:
                break
            rows = [[report.middle(v, room) if i == col and len(v) > room else v for i, v in enumerate(r)]
                    for r in rows]
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def out(text: str) -> None:
    """Data to stdout; names with odd bytes are escaped rather than crash the terminal."""
    sys.stdout.write(text.encode("utf-8", "backslashreplace").decode("utf-8", "replace"))
    sys.stdout.flush()


# --- scan ----------------------------------------------------------------------------------------

def scan(ui: Ui, comfyui: str | None, sources: tuple[str, ...], fmt: str, no_cache: bool,
         duplicates: bool, source_is_models: bool = False) -> None:
    """`comfy-migrate scan` (its options are documented on the click command in cli.py)."""
    from migrate.disk.scan import hash_records, scan_tree
    _, roots = resolve_sources(comfyui, sources, ui, source_is_models)
    cache = open_cache(no_cache)
    scans = [scan_tree(r) for r in roots]
    if duplicates:
        return report_duplicates(ui, scans, cache, fmt)
    with ui.progress("hashing") as (on_total, on_bytes):
        on_total(sum(r.size for s in scans for r in s.records if r.status is Status.MIGRATE))
        results = [hash_records(s, cache, on_bytes) for s in scans]
    if fmt == "json":
        for chunk in report.iter_scan_json(results):     # ASCII only: written as it is made
            sys.stdout.write(chunk)
        sys.stdout.flush()
    else:
        for res in results:
            out(f"{report.show(res.root)}\n")
            out(table(report.scan_rows(res), report.SCAN_HEADERS, names=(0,)) + "\n")
            odd = [r for r in res.records if not r.status.migrates]
            for r in odd:
                why = r.detail or r.status.value
                line = f"  not migrated: {report.show(r.rel)}: {report.show(why)}"
                if ui.verbosity <= 0 and len(line) > report.WIDTH:    # -v: whole; else without "(left as it is)"
                    head = f"  not migrated: {report.middle(r.rel, 50)}: "
                    line = head + report.middle(why.split(" (")[0], report.WIDTH - len(head))
                out(line + "\n")
            out("\n")
    for res in results:
        for p in res.problems:
            ui.warn(f"{report.show(p.path)}: {p.message}")
        ui.debug(f"{res.root}: hashed {res.hashed_files} files ({report.human(res.hashed_bytes)}), "
                 f"{res.cached_files} from the cache")
    if any(r.problems for r in results):
        sys.exit(ExitCode.PROBLEMS)


def report_duplicates(ui: Ui, scans, cache, fmt: str) -> None:
    from migrate.disk.dupes import find_duplicates
    with ui.progress("hashing") as (_, on_bytes):
        found = find_duplicates(scans, cache, on_bytes)
    if fmt == "json":
        out(report.dumps_lines(report.duplicates_doc(found), ("groups", "problems")))
    else:
        if found.groups:
            out(table(report.duplicate_rows(found), report.DUPLICATE_HEADERS, names=(3,)) + "\n\n")
        out(report.duplicate_summary(found) + "\n")
    for p in [p for s in scans for p in s.problems] + list(found.problems):
        ui.warn(f"{report.show(p.path)}: {p.message}")
    ui.debug(f"read {found.hashed_files} files in full and the ends of {found.partial_files}; "
             f"{found.cached_files} digests from the cache")
    if found.problems or any(s.problems for s in scans):
        sys.exit(ExitCode.PROBLEMS)


# --- the end of a command ------------------------------------------------------------------------

def fail(exc: BaseException) -> NoReturn:
    """Exit for an error that reached the top: one line, a documented exit code, never a traceback."""
    if isinstance(exc, MigrateError):
        what = "interrupted" if exc.exit_code == ExitCode.INTERRUPTED else "error"
        err(f"comfy-migrate: {what}: {exc}" + (f" ({exc.hint})" if exc.hint else ""))
        sys.exit(exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        err("comfy-migrate: interrupted")
        sys.exit(ExitCode.INTERRUPTED)
    if isinstance(exc, OSError):
        # Unexpected at this level (per-file errors are reported as data).
        from migrate.disk.fsops import describe
        code = ExitCode.NO_SPACE if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ExitCode.PROBLEMS
        err(f"comfy-migrate: error: {describe(exc)} (nothing was lost: "
            + ("free space, then " if code == ExitCode.NO_SPACE else "")
            + "`comfy-migrate run` (continues this run) or `comfy-migrate rollback` (undoes it))")
        sys.exit(code)
    raise exc


# --- workflows --manifest / --check --------------------------------------------------------------

def model_sha256(paths: dict, cache: DigestCache | None, target: str | None = None, read: bool = True) -> dict:
    """key -> SHA-256 of the file at each path (symlinks followed, as ComfyUI loads them): from the
    digest cache or the store's catalogue where they still vouch for the file, else read once (xxh3,
    SHA-256 and BLAKE3 in that one read, all cached). A file that cannot be read maps to None; so does
    one neither vouches for when read is False (a listing never starts a silent hashing pass)."""
    import time
    from migrate.disk import catalogue, hashing
    if read:
        hashing.set_hashes("all")
    cat = catalogue.load(target)[0] if target and os.path.isdir(target) else {}
    out = {}
    for key, path in paths.items():
        try:
            real = os.path.realpath(path)
            st = os.stat(real)
            s = hashing.stamp(st)
            got = cache.get_all(s) if cache is not None else None
            if (got is None or got[1] is None) and target and real.startswith(target.rstrip("/") + "/"):
                d = catalogue.lookup(cat, os.path.relpath(real, target), (st.st_ino, st.st_size, st.st_mtime_ns),
                                     st.st_ctime_ns)
                got = (d,) + (hashing.extras(d) or (None, None)) if d else None
            if (got is None or got[1] is None) and not read:
                out[key] = None
                continue
            if got is None or got[1] is None:
                at = time.time_ns()
                digest = hashing.hash_path(real, s)
                if cache is not None:
                    cache.put(s, digest, at)
                got = (digest,) + (hashing.extras(digest) or (None, None))
            out[key] = got[1]
        except OSError:
            out[key] = None
    if cache is not None and read:
        cache.save()
    return out
