"""Which pod and store a command means: the ComfyUI folder, its models trees, how it is started,
the target, and the caches of this user (the digest cache, the audit's verdicts).

Used by the shell and the application layer alike; messages go to the Io given (app.common.Io: info,
debug, warn), or nowhere without one.
"""
from __future__ import annotations

import contextlib
import os

from migrate.core.errors import BadInput, MigrateError
from migrate.disk.hashing import DigestCache, default_cache_path


def adopt_comfyui(home: str | None, ui=None) -> None:
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


def resolve_launch(home: str | None, given: tuple[str, str] | None, ui=None):
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


def resolve_pod(comfyui: str | None, sources: tuple[str, ...], ui=None, insist: bool = False,
                given: tuple[str, str] | None = None):
    """(the ComfyUI folder or None, the models trees, launch.Launch or None): resolve_sources, with
    ComfyUI's launch options (resolve_launch) deciding its models folder."""
    from migrate.core.comfy import find_comfyui
    home = find_comfyui(comfyui) if (comfyui or not sources) else None
    launch = resolve_launch(home, given, ui)
    home, roots = resolve_sources(comfyui, sources, ui, insist, launch.models if launch else None)
    return home, roots, launch


def resolve_sources(comfyui: str | None, sources: tuple[str, ...],
                    ui=None, insist: bool = False,
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
        check_given_once(sources, roots)
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


def check_given_once(sources: tuple[str, ...], roots: list[str]) -> None:
    """Refuse one models folder given as two --source (the same spelling, a trailing slash, `./`, a
    symlink to it): it would be scanned twice. Trees inside one another are refused by plan.check_roots."""
    spelled: dict[str, list[str]] = {}
    for given, root in zip(sources, roots):
        spelled.setdefault(os.path.realpath(root), []).append(given)
    for real, names in spelled.items():
        if len(names) > 1:
            times = "twice" if len(names) == 2 else f"{len(names)} times"
            raise BadInput(f"the same folder {real} is given {times} as --source: {', '.join(names)}",
                           "give each models tree once")


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


@contextlib.contextmanager
def kept_reads():
    """The files whose bytes rollback and purge re-read (to compare with the log) go into the user's
    digest cache with their SHA-256 and BLAKE3, as scan, verify and audit's reads do (issue 24)."""
    from migrate.disk.hashing import keep_reads
    try:
        yield
    finally:
        keep_reads(open_cache(False))


def open_verdicts(no_cache: bool):
    from migrate.disk.sniff import VerdictCache
    return None if no_cache else VerdictCache(default_cache_path())
