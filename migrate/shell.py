"""The click-free half of the shell: messages, output, resolving the user's paths, and `scan`.

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
from migrate.core.errors import BadInput, ExitCode, MigrateError
from migrate.disk.hashing import DigestCache, default_cache_path
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


def adopt_comfyui(home: str | None, ui: Ui | None = None) -> None:
    """Use the categories of the ComfyUI installed at `home` (its folder_paths.py), saying which
    table applies; without one, or unreadable, the built-in table (and say so)."""
    from migrate.core import comfy
    table, note = comfy.installed_categories(home) if home else (None, "")
    comfy.use_categories(table)
    if ui is None or not home:
        return
    if table is not None:
        ui.debug(note)
    elif os.path.exists(os.path.join(home, "folder_paths.py")):
        ui.warn(note)
    else:       # not a whole ComfyUI install (a models-only copy): said with -v only
        ui.debug(f"no folder_paths.py in {home}: using comfy-migrate's built-in category table")


def resolve_launch(home: str | None, given: tuple[str, str] | None, ui: Ui | None = None):
    """How the ComfyUI of `home` (the folder of its main.py) is started (launch.Launch), or None
    without a ComfyUI folder. Its options: `given` ((text, where it came from): --comfyui-args or
    its variable), else those of the ComfyUI running from `home` (/proc), else none. A folder
    without main.py that a running ComfyUI uses as its --base-directory (or models folder) is refused,
    naming the folder of that ComfyUI's main.py: it reads the YAML next to main.py, not one here."""
    from migrate.disk import launch as launching
    from migrate.disk.running import find_running
    if home is None:
        if given is not None:
            raise BadInput(f"{given[1]} needs the ComfyUI folder (the folder of main.py)", "pass --comfyui DIR")
        return None
    running = find_running(home)
    if not running and not os.path.isfile(os.path.join(home, "main.py")):
        for r in find_running(None):
            try:
                other = launching.launch_of(r.main, r.args, "", r.cwd, lenient=True)
            except MigrateError:
                continue
            real = os.path.realpath(home)
            if real in (os.path.realpath(other.base), os.path.realpath(other.models)) \
                    or os.path.realpath(os.path.join(home, "models")) == os.path.realpath(other.models):
                raise BadInput(f"{home} is the base or models folder of the ComfyUI running from {r.main} "
                               f"({r.describe()}: {shlex_join(r.args)}), which reads {r.main}/extra_model_paths.yaml, "
                               "not one here", f"pass --comfyui {r.main} (its options are read from the process)")
    if given is not None and given[0].strip():
        got = launching.launch_of(home, launching.split(given[0], given[1]), given[1])
        for r in running:
            try:
                now = launching.launch_of(home, r.args, "", r.cwd, lenient=True)
            except MigrateError:
                continue
            if now.args != got.args and ui is not None:
                ui.warn(f"the ComfyUI running from {home} ({r.describe()}) was started with "
                        f"{now.shell_args() or 'no options that place models'}, not {got.shell_args() or 'none'} "
                        f"({given[1]}): planned for {given[1]}")
        return got
    if running:
        r = running[0]
        return launching.launch_of(home, r.args, f"read from the running ComfyUI, pid {r.pid}", r.cwd, lenient=True)
    return launching.plain(home)


def shlex_join(args) -> str:
    import shlex
    return shlex.join(args)


def resolve_pod(comfyui: str | None, sources: tuple[str, ...], ui: Ui | None = None, insist: bool = False,
                given: tuple[str, str] | None = None):
    """(the ComfyUI folder or None, the models trees, launch.Launch or None): resolve_sources, with
    ComfyUI's launch options (resolve_launch) deciding its models folder."""
    from migrate.core.comfy import find_comfyui
    home = find_comfyui(comfyui) if (comfyui or not sources) else None
    launch = resolve_launch(home, given, ui)
    home, roots = resolve_sources(comfyui, sources, ui, insist, launch.models if launch else None)
    return home, roots, launch


def resolve_sources(comfyui: str | None, sources: tuple[str, ...],
                    ui: Ui | None = None, insist: bool = False,
                    models: str | None = None) -> tuple[str | None, list[str]]:
    """(the ComfyUI folder or None, the models trees); the ComfyUI's own categories are adopted.
    A --source must look like a models folder (named models, or holding a ComfyUI category folder)
    unless `insist` (--source-is-models): an unset variable must not migrate the home folder.
    models: ComfyUI's models folder (default <comfyui>/models; launch.Launch.models)."""
    from migrate.core.comfy import check_dir, find_comfyui
    if sources:
        home = find_comfyui(comfyui) if comfyui else None
        adopt_comfyui(home, ui)
        roots = [check_dir(s, "source") for s in sources]
        for r in roots:
            if not insist and not _looks_like_models(r):
                raise BadInput(f"the source {r} does not look like a ComfyUI models folder (it is not named "
                               "models and holds no category folder such as checkpoints or loras)",
                               "check --source, or pass --source-is-models to migrate it anyway")
        return home, roots
    home = find_comfyui(comfyui)
    adopt_comfyui(home, ui)
    models = models or os.path.join(home, "models")
    if not os.path.isdir(models) and _looks_like_models(home):
        raise BadInput(f"{home} is ComfyUI's models folder itself, not the ComfyUI folder",
                       f"pass --comfyui {os.path.dirname(home)} (or --source {home})")
    return home, [check_dir(models, "models folder")]


def _looks_like_models(path: str) -> bool:
    """A folder named models, or holding ComfyUI category folders: --comfyui given one level too deep."""
    from migrate.core.comfy import FOLDER_CATEGORY
    try:
        names = set(os.listdir(path))
    except OSError:
        return False
    return os.path.basename(path.rstrip("/")) == "models" or bool(names & set(FOLDER_CATEGORY))


def resolve_target(target: str | None) -> str:
    from migrate.disk.facts import DEFAULT_TARGET
    path = os.path.abspath(target or DEFAULT_TARGET)
    check_reachable(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise BadInput(f"the target {path} is not a folder", "pass --target DIR")
    return path


def check_reachable(path: str) -> None:
    """A FUSE volume whose daemon died (or a network mount that dropped) answers every call with
    ENOTCONN (or EIO): that looks like a missing folder to os.path.exists. Say which mount point."""
    import errno
    cur, dead, why = path, None, ""
    while True:
        try:
            os.lstat(cur)
            break
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOTCONN, errno.EIO, errno.ESTALE, errno.EHOSTDOWN):
                break
            dead, why = cur, exc.strerror     # the highest such folder is the mount point
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        cur = parent
    if dead is not None:
        raise BadInput(f"the volume mounted at {dead} does not answer ({why}): its mount dropped (a FUSE "
                       f"daemon died or the network went away), so {path} cannot be reached",
                       f"remount it (`umount -l {dead}`, then mount it again), then run the command again")


def open_cache(no_cache: bool) -> DigestCache | None:
    return None if no_cache else DigestCache(default_cache_path())


def open_verdicts(no_cache: bool):
    from migrate.disk.sniff import VerdictCache
    return None if no_cache else VerdictCache(default_cache_path())


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

def model_sha256(paths: dict, cache: DigestCache | None, target: str | None = None) -> dict:
    """key -> SHA-256 of the file at each path (symlinks followed, as ComfyUI loads them): from the
    digest cache or the store's catalogue where they still vouch for the file, else read once (xxh3,
    SHA-256 and BLAKE3 in that one read, all cached). A file that cannot be read maps to None."""
    import time
    from migrate.disk import catalogue, hashing
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
            if got is None or got[1] is None:
                at = time.time_ns()
                digest = hashing.hash_path(real, s)
                if cache is not None:
                    cache.put(s, digest, at)
                got = (digest,) + (hashing.extras(digest) or (None, None))
            out[key] = got[1]
        except OSError:
            out[key] = None
    if cache is not None:
        cache.save()
    return out
