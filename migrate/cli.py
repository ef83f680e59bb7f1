"""The command line in click: options, help texts, prompts and exit codes of every command.

The only importer of click, and the program's one entry point (`comfy-migrate`, `python -m migrate`).
The click-free pieces of the shell (messages, output, paths, the scan command's body) are in
shell.py. Start-up stays short by importing what a command needs inside that command.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections import Counter

import click

from migrate import __version__, shell
from migrate.disk import fsops
from migrate.views import report
from migrate.core.errors import BadInput, BadLog, ExitCode, MigrateError, NotConfirmed
from migrate.core.model import Mode, OnConflict, Policy
from migrate.shell import Ui, open_cache, open_verdicts, out, resolve_sources, resolve_target, table

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="comfy-migrate")
@click.option("-q", "--quiet", count=True, help="Less output on stderr.")
@click.option("-v", "--verbose", count=True, help="More output on stderr.")
@click.option("--hashes", type=click.Choice(["all", "xxh3"]), default="all", envvar="COMFY_MIGRATE_HASHES",
              show_default=True, help="Digests computed when a file's bytes are read: xxh3, SHA-256 and BLAKE3 "
              "in the same read, or xxh3 alone (fastest; SHA-256/BLAKE3 then come with a later read).")
@click.pass_context
def cli(ctx: click.Context, quiet: int, verbose: int, hashes: str) -> None:
    """Move ComfyUI's models into one shared store without duplicates, point
    extra_model_paths.yaml at it, and undo it all from the audit log.

    \b
    Typical use on a pod:
      comfy-migrate plan                 # look first: the dry run
      comfy-migrate run                  # do it (asks first)
      comfy-migrate verify               # ComfyUI finds every model in the store
      comfy-migrate rollback             # everything back as it was
    """
    ctx.obj = Ui(verbose - quiet)
    if hashes != "all":
        from migrate.disk.hashing import set_hashes
        set_hashes(hashes)


# --- shared options ------------------------------------------------------------------------------

def _a_number(ctx, param, value):
    """NaN passes click.FloatRange's comparisons: refuse it (exit 2)."""
    if value != value:
        raise click.BadParameter("not a number")
    return value


def nonempty(ctx, param, value):
    """An empty value (`--target ""`, an unset variable) is an error, never the current folder."""
    for v in (value if isinstance(value, tuple) else (value,)):
        if v is not None and not str(v).strip():
            raise click.BadParameter("must not be empty (an unset variable?)")
    return value


def base_path_spec(ctx, param, value):
    """--base-path must be absolute, relative or env:NAME with a name ComfyUI can expand (exit 2 otherwise,
    as for any bad option value); whether $NAME is set here is a fact of the pod, checked by the plan (3)."""
    value = nonempty(ctx, param, value)
    if value in (None, "absolute", "relative"):
        return value
    name = value[4:] if value.startswith("env:") else None
    if name is None:
        raise click.BadParameter(f"{value!r} is not absolute, relative or env:VAR")
    if not name or not (name[0].isalpha() or name[0] == "_") or not name.replace("_", "").isalnum() \
            or not name.isascii():
        raise click.BadParameter(f"env:{name}: not a variable name ComfyUI can expand "
                                 "(letters, digits and _, e.g. env:COMFY_VOLUME)")
    return value


def source_options(f):
    f = click.option("--source-is-models", is_flag=True,
                     help="Migrate each --source even if it does not look like a models folder (not named "
                          "models, no ComfyUI category folder in it).")(f)
    f = click.option("--no-cache", is_flag=True, help="Hash every file, ignoring the digest cache.")(f)
    f = click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
                     envvar="COMFY_MIGRATE_FORMAT", show_default=True, help="Output format.")(f)
    f = click.option("--source", "sources", multiple=True, callback=nonempty,
                     envvar="COMFY_MIGRATE_SOURCE",
                     help="A models tree to migrate (repeatable). Default: <comfyui>/models.")(f)
    f = click.option("--comfyui", envvar="COMFYUI_DIR", callback=nonempty,
                     help="The ComfyUI folder (the folder of its main.py). Default: $COMFYUI_DIR, /workspace/runpod-slim/ComfyUI, "
                          "/workspace/ComfyUI.")(f)
    return f


def price_option(f):
    return click.option("--price-per-gb-month", type=click.FloatRange(0, 1000), default=0.07, show_default=True,
                        callback=_a_number,
                        envvar="COMFY_MIGRATE_PRICE", metavar="USD",
                        help="What a GB-month of network volume costs (RunPod: 0.07), for the unused models' cost.")(f)


def _launch_args(ctx, param, value):
    """(the text, where it came from) of --comfyui-args, or None."""
    if value is None:
        return None
    from click.core import ParameterSource
    env = ctx.get_parameter_source(param.name) is ParameterSource.ENVIRONMENT
    return value, ("$COMFY_MIGRATE_COMFYUI_ARGS" if env else "--comfyui-args")


def launch_option(f):
    return click.option("--comfyui-args", "comfyui_args", metavar="'OPTIONS'", envvar="COMFY_MIGRATE_COMFYUI_ARGS",
                        callback=_launch_args,
                        help="ComfyUI's own options as it is started (one quoted string, e.g. '--base-directory "
                             "/workspace/data --extra-model-paths-config more.yaml'; relative paths from the ComfyUI "
                             "folder). Default: those of the ComfyUI running from --comfyui, else none.")(f)


def plan_options(f):
    f = launch_option(f)
    f = price_option(f)
    f = click.option("--include-suspect", is_flag=True,
                     help="Migrate files the audit finds broken or suspect too (default: they stay). Unfinished "
                          "downloads (.part, ...) and empty files are never migrated.")(f)
    f = click.option("--base-path", default=None, envvar="COMFY_MIGRATE_BASE_PATH",
                     callback=base_path_spec,
                     help="base_path written to the YAML: absolute, relative (to the YAML's folder) "
                          "or env:VAR. Default: the form the YAML's comfy-migrate section has, else absolute.")(f)
    f = click.option("--link-back/--no-link-back", default=None,
                     help="Leave a symlink at each moved file's old place. Default: only in folders "
                          "ComfyUI does not know (custom nodes read them directly).")(f)
    f = click.option("--on-conflict", type=click.Choice([c.value for c in OnConflict]), default="skip",
                     envvar="COMFY_MIGRATE_ON_CONFLICT", show_default=True,
                     help="When the target holds other content under a name: leave the source (skip) "
                          "or keep both with a suffix (rename).")(f)
    f = click.option("--mode", type=click.Choice([m.value for m in Mode]), default="move",
                     envvar="COMFY_MIGRATE_MODE", show_default=True, help="Move, hardlink or copy.")(f)
    f = click.option("--yaml", "yaml_path", envvar="COMFY_MIGRATE_YAML", callback=nonempty,
                     help="extra_model_paths.yaml to update. Default: <comfyui>/extra_model_paths.yaml.")(f)
    f = target_option(f)
    return source_options(f)


def target_option(f):
    return click.option("--target", envvar="COMFY_MIGRATE_TARGET", callback=nonempty,
                        help="The shared store. Default: $COMFY_MIGRATE_TARGET, else /workspace/models.")(f)


# --- scan ----------------------------------------------------------------------------------------

@cli.command(context_settings=CONTEXT)
@source_options
@click.option("--duplicates", is_flag=True,
              help="Only report files with identical content, hashing only files whose size another "
                   "file shares (hardlinked names are one copy).")
@click.pass_obj
def scan(ui: Ui, comfyui, sources, fmt, no_cache, duplicates, source_is_models) -> None:
    """Walk the models trees, classify every entry and hash the files to migrate.

    \b
    Example:
      comfy-migrate scan --comfyui /workspace/runpod-slim/ComfyUI --format json > scan.json
      comfy-migrate scan --source ./models --duplicates
    """
    shell.scan(ui, comfyui, sources, fmt, no_cache, duplicates, source_is_models)


# --- plan ----------------------------------------------------------------------------------------

def build(ui: Ui, comfyui, sources, target, yaml_path, mode, on_conflict, link_back, base_path, no_cache,
          include_suspect=False, cache=None, again: bool = False, source_is_models: bool = False,
          comfyui_args=None):
    """Gather facts and make the plan. `again`: a re-plan (under the lock) whose warnings were
    already shown once."""
    from migrate.disk.facts import gather, make_plan
    home, roots, launch = shell.resolve_pod(comfyui, sources, None if again else ui, source_is_models, comfyui_args)
    if home is not None and not sources:
        from migrate.core.comfy import models_of_another_install
        models = launch.models if launch is not None else os.path.join(home, "models")
        owner = models_of_another_install(home, models)
        if owner is not None:
            raise BadInput(f"{models} is a symlink to {os.path.realpath(models)}, "
                           f"the models folder of another ComfyUI install ({owner}): migrating it would empty that "
                           "install's models folder under it", f"migrate that install itself (--comfyui {owner}), "
                           "and give this one its YAML: `comfy-migrate plan` for it then has nothing to move")
    target = resolve_target(target)
    if yaml_path is not None and not again:
        check_yaml_is_read(home, os.path.abspath(yaml_path), launch)
    if yaml_path is None and home is not None:
        yaml_path = os.path.join(home, "extra_model_paths.yaml")
    yaml_path = os.path.abspath(yaml_path) if yaml_path else None
    cache = cache if cache is not None else open_cache(no_cache)
    with ui.progress("hashing") as (on_total, on_bytes):
        facts = gather(roots, target, yaml_path, cache, on_total, on_bytes, open_verdicts(no_cache),
                       include_suspect, launch.models if launch else None, launch)
    for s in (() if again else facts.sources):
        for p in s.problems:
            ui.warn(f"{report.show(p.path)}: {p.message}")
    if facts.catalogue_warning and not again:
        ui.warn(facts.catalogue_warning)
    if facts.target_scan is not None:
        ts = facts.target_scan
        ui.debug(f"store: {len(ts.records)} entries, {facts.catalogue_hits} digests from its catalogue, "
                 f"{ts.cached_files} from the cache, {ts.hashed_files} files read ({ts.hashed_bytes} bytes)")
    if not again:
        from migrate.disk.hashing import extras, hashes_on
        known = {r.digest for sc in [*facts.sources, facts.target_scan] if sc is not None for r in sc.records if r.digest}
        lack = sum(1 for d in known if extras(d) is None)
        if lack and hashes_on():
            ui.debug(f"{lack} of {len(known)} distinct contents have xxh3 only (read before SHA-256/BLAKE3 were "
                     "computed, or with --hashes xxh3): they get them the next time their bytes are read")
    policy = Policy(mode=Mode(mode), on_conflict=OnConflict(on_conflict), link_back=link_back,
                    base_path=base_path)
    return facts, make_plan(facts, policy)


def check_yaml_is_read(home, yaml_path: str, launch=None) -> None:
    """--yaml must name a file ComfyUI reads: the extra_model_paths.yaml next to its main.py (through
    symlinks: the same file), or one its launch options load (--extra-model-paths-config). Written
    elsewhere, the run would take every model out of the pod and ComfyUI would find none of them.
    (A missing folder is the preflight's to name.)"""
    if not os.path.isdir(os.path.dirname(yaml_path)):
        return
    if launch is not None and os.path.realpath(yaml_path) in {os.path.realpath(p) for p in launch.configs}:
        return
    folder = home if home is not None else os.path.dirname(yaml_path)
    read = os.path.join(folder, "extra_model_paths.yaml")
    if os.path.realpath(yaml_path) == os.path.realpath(read) and (
            home is not None or os.path.isfile(os.path.join(folder, "main.py"))):
        return
    if home is None:
        raise BadInput(f"--yaml {yaml_path}: ComfyUI reads the extra_model_paths.yaml next to its main.py, and "
                       f"{os.path.dirname(yaml_path)} holds no main.py: a YAML written there would not be read, "
                       "and the moved models would be lost to ComfyUI",
                       "pass --comfyui DIR (the folder of main.py) instead of --yaml, or --yaml DIR/extra_model_paths.yaml")
    raise BadInput(f"--yaml {yaml_path}: the ComfyUI in {home} reads {read}, not this file: written there, the "
                   "moved models would be lost to ComfyUI", f"leave out --yaml (it defaults to {read}); if ComfyUI is "
                   f"started with --extra-model-paths-config {yaml_path}, pass --comfyui-args "
                   f"{shlex.quote('--extra-model-paths-config ' + yaml_path)}")


def print_plan(plan, fmt: str, verbose: bool = False, quiet: bool = False) -> None:
    """The plan for people (or JSON). quiet (-q): no line per file, the totals and what needs a look."""
    if fmt == "json":
        out(report.dumps(report.plan_doc(plan)))
        return
    out("\n".join(report.plan_header(plan)) + "\n\n")
    rows, notes = report.plan_rows(plan, verbose)
    if rows and not quiet:
        out(table(rows, report.PLAN_HEADERS, names=(1, 3)) + "\n")
    for n in () if quiet else notes:
        out(f"  {n}\n")
    out(("" if quiet else "\n") + table(report.summary_rows(plan), ["action", "files", "size"]) + "\n\n")
    for line in report.summary_lines(plan, quiet, verbose):
        out(line + "\n")
    diff = report.yaml_diff(plan)
    if diff and quiet:
        lines = diff.splitlines()[2:]
        out(f"\n{report.show(plan.yaml_path)}: +{sum(1 for x in lines if x.startswith('+'))} "
            f"-{sum(1 for x in lines if x.startswith('-'))} lines (the diff without -q)\n")
    elif diff:
        out(f"\nextra_model_paths.yaml change:\n{diff if verbose else fit_lines(diff)}")
    elif plan.yaml_path:
        out("\n" + report.fit("", plan.yaml_path, ": no change", verbose) + "\n")
    if plan.name_changes:
        out("\n" + "".join(line + "\n" for line in report.name_change_lines(plan)))
    paths = (plan.yaml_path, plan.target, *plan.sources)
    for w in report.warning_lines(plan):
        out("warning: " + "\n".join(report.wrap(w, paths, verbose, len("warning: "))) + "\n")
    for line in report.finding_lines(plan.findings, plan.sources):
        out("audit: " + "\n".join(report.wrap(line, paths, verbose, len("audit: "))) + "\n")


def fit_lines(text: str) -> str:
    """Each line of a YAML diff shortened in the middle to report.WIDTH columns (-v: whole)."""
    return "".join(report.middle(line, report.WIDTH) + "\n" for line in text.splitlines())


@cli.command("plan", context_settings=CONTEXT)
@plan_options
@click.option("--report", "report_path", metavar="FILE.html", type=click.Path(dir_okay=False, writable=True),
              callback=lambda ctx, param, v: _html_path(v),
              help="Also write the plan as one self-contained HTML page (totals, a chart, name changes, duplicates, "
                   "audit, workflows, the YAML diff).")
@click.pass_obj
def plan_cmd(ui: Ui, report_path, **kw) -> None:
    """Show what `run` would do (the dry run); changes nothing.

    \b
    Example:
      comfy-migrate plan --comfyui /workspace/runpod-slim/ComfyUI --target /workspace/models
      comfy-migrate plan --report plan.html        # a page to read at a glance (or on a phone)
    """
    fmt = kw.pop("fmt")
    price = kw.pop("price_per_gb_month")
    _, plan = build(ui, **kw)
    print_plan(plan, fmt, ui.verbosity > 0, ui.verbosity < 0)
    if report_path is not None:
        write_report(ui, plan, kw, price, report_path)
    exit_if_unfit(plan)


def exit_if_unfit(plan) -> None:
    """A plan that does not fit ends `plan` and `run --dry-run` with exit 4, as `run` would refuse it
    (the plan is printed first: it says how much is missing)."""
    if plan.fits and plan.container_fits:
        return
    where = "the target" if not plan.fits else "the container disk"
    shell.err(f"comfy-migrate: error: the plan does not fit: {where} lacks "
              + (report.human(plan.space_to_take - (plan.free_bytes or 0)) if not plan.fits
                 else report.human(plan.container_bytes - (plan.container_free or 0)))
              + " (free space there, or migrate fewer sources; `run` would refuse it)")
    sys.exit(ExitCode.NO_SPACE)


def _html_path(value):
    """--report must name an .html file (checked before planning: it never writes over another file)."""
    if value is not None and not value.lower().endswith((".html", ".htm")):
        raise click.BadParameter(f"must be an .html file, not {value!r} (e.g. plan.html)")
    return value


def run_report_path(log_path: str) -> str:
    """<target>/.comfy-migrate/reports/<run>.html: next to the runs folder (which holds logs only)."""
    reports = os.path.join(os.path.dirname(os.path.dirname(log_path)), "reports")
    os.makedirs(reports, exist_ok=True)
    return os.path.join(reports, os.path.basename(log_path)[:-len(".jsonl")] + ".html")


def write_report(ui: Ui, plan, kw: dict, price: float, path: str, made: str = "", announce: bool = True,
                 done=None) -> str:
    """The plan's HTML page (html_report), written atomically; returns the path written. done: after
    a run, the numbers its terminal prints (html_report.render)."""
    from migrate.disk import fsops
    from migrate.views import html_report
    if not path.lower().endswith((".html", ".htm")):     # never write over a file that is not a report
        raise BadInput(f"the report must be an .html file, not {path}", "name it e.g. plan.html")
    home, _ = resolve_sources(kw.get("comfyui"), kw.get("sources") or (), insist=True)
    doc = report.plan_doc(plan)
    changes = {(c.get("category"), c.get("name")): c.get("reason", "") for c in doc.get("name_changes", ())}
    flows = workflow_report(home, plan.yaml_path, price, changes, plan.launch) if home else None
    from migrate.disk.hashing import extras
    sha256 = {a.digest: extras(a.digest)[0] for a in plan.actions if extras(a.digest)}
    page = html_report.render(plan, flows, made=made, name_changes=doc.get("name_changes"), done=done, sha256=sha256)
    path = os.path.abspath(path)
    try:
        fsops.atomic_write(path, page.encode("utf-8"), 0o644)
    except OSError as exc:
        raise BadInput(f"cannot write the report {path}: {exc.strerror}", "choose another --report path")
    if announce:
        ui.info(f"report: {report.show(path)}")
    return path


def wants_json(argv=None) -> bool:
    """--format json (or COMFY_MIGRATE_FORMAT=json) was asked for: a refusal is then JSON on stdout too."""
    argv = sys.argv[1:] if argv is None else argv
    for i, a in enumerate(argv):
        if a == "--format" and i + 1 < len(argv):
            return argv[i + 1] == "json"
        if a.startswith("--format="):
            return a == "--format=json"
    return os.environ.get("COMFY_MIGRATE_FORMAT") == "json"


def json_error(message: str, hint: str, code: int) -> None:
    out(report.dumps({"error": {"message": message, "hint": hint, "exit_code": code}}))


def _verbosity(sign: int):
    def bump(ctx: click.Context, param, value: int) -> None:
        ui = ctx.find_object(Ui)
        if ui is not None and value:
            ui.verbosity += sign * value
    return bump


def _accept_verbosity_after_the_command() -> None:
    """`comfy-migrate plan -v` means what `comfy-migrate -v plan` means: every command takes -v/-q too."""
    for cmd in cli.commands.values():
        cmd.params.append(click.Option(["-v", "--verbose"], count=True, expose_value=False,
                                       callback=_verbosity(+1), help="More output on stderr."))
        cmd.params.append(click.Option(["-q", "--quiet"], count=True, expose_value=False,
                                       callback=_verbosity(-1), help="Less output on stderr."))


def from_environment(exc: click.ClickException) -> None:
    """A bad value read from a variable (COMFY_MIGRATE_FORMAT=yaml) names the variable, not an option
    never typed."""
    if not isinstance(exc, click.BadParameter) or exc.ctx is None or exc.param is None:
        return
    from click.core import ParameterSource
    if exc.ctx.get_parameter_source(exc.param.name) is not ParameterSource.ENVIRONMENT:
        return
    var = exc.param.envvar if isinstance(exc.param.envvar, str) else \
        next((v for v in exc.param.envvar or () if v in os.environ), None)
    if var:
        exc.message = f"{exc.message} (set in the environment: unset {var} or fix it)"
        exc.param_hint = f"${var}"


def main() -> None:
    try:
        cli.main(prog_name="comfy-migrate", standalone_mode=False)
    except click.exceptions.Abort:
        shell.fail(KeyboardInterrupt())
    except click.ClickException as exc:
        from_environment(exc)
        exc.show()
        if wants_json():
            json_error(exc.format_message(), "see --help", ExitCode.USAGE)
        sys.exit(ExitCode.USAGE)
    except MigrateError as exc:
        if wants_json():
            json_error(str(exc), exc.hint, exc.exit_code)
        shell.fail(exc)
    except (KeyboardInterrupt, OSError) as exc:
        shell.fail(exc)
    else:
        sys.exit(0)


# --- run -----------------------------------------------------------------------------------------

def confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise NotConfirmed("no terminal to ask for confirmation", "pass --yes to proceed without asking")
    if not click.confirm(question, default=False, err=True):
        raise NotConfirmed("not confirmed; nothing was changed")


def wait_option(f):
    return click.option("--wait", type=click.FloatRange(min=0, max=7 * 86400), default=900, show_default=True,
                        metavar="SECONDS", callback=_a_number,
                        help="While another run holds the target's lock, wait this long (0: fail at once).")(f)


def take_lock(ui: Ui, target: str, purpose: str, wait: float, room: bool = False):
    """The target's lock, waiting for another pod's run (and saying whose) up to `wait` seconds."""
    from migrate.app.execute import state_dir
    from migrate.disk.lock import TargetLock

    def on_wait(h: dict) -> None:
        if not h.get("host"):       # garbage, or being written: taken over once it stays so a moment
            ui.info(f"waiting for the target's lock: {os.path.join(state_dir(target), 'lock')} names no holder "
                    "(being written, or corrupt: taken over in a few seconds)")
            return
        ui.info(f"waiting for the target's lock: {h.get('purpose', 'a run')} of pid {h.get('pid', '?')} on host "
                f"{h.get('host', '?')} holds it since {h.get('started', '?')} (up to {wait:.0f} s; --wait)")

    try:
        lock = TargetLock(state_dir(target), purpose).acquire(wait, on_wait)
    except OSError as exc:
        # A full store: a rollback may use the reserve each run keeps (fsops.keep_reserve) for its lock
        # and log; `run` and `purge` may not (free space first), so that the rollback always can.
        if not (room and exc.errno in fsops.FULL_ERRNOS and fsops.release_reserve(state_dir(target))):
            raise
        ui.debug("the store is full: released the rollback reserve")
        lock = TargetLock(state_dir(target), purpose).acquire(wait, on_wait)
    if lock.took_over:
        ui.warn(f"took over a stale lock ({lock.took_over.get('reason')})")
    return lock


def clear_stale_lock(ui: Ui, target: str) -> None:
    """Nothing to do under the lock: still remove one a killed run or rollback left behind."""
    from migrate.app.execute import state_dir
    from migrate.disk.lock import TargetLock
    if os.path.isdir(state_dir(target)):
        why = TargetLock(state_dir(target), "cleanup").clear_stale()
        if why:
            ui.info(f"removed a stale lock ({why})")


def memo_cache(facts):
    """The digests just gathered, as a cache for the re-plan under the lock (no byte read twice)."""
    from migrate.disk.hashing import DigestCache
    memo = DigestCache(None)
    for scan in facts.sources + ((facts.target_scan,) if facts.target_scan is not None else ()):
        for r in scan.records:
            if r.digest:
                memo.put(r.stamp, r.digest, facts.started_ns)
    return memo


def show_summary(ui: Ui, plan, fmt: str) -> None:
    """What `run` shows before it asks: the totals, and the plan's warnings in one short line each
    (-v: in full; `plan` shows every file)."""
    if fmt == "table":
        if plan.launch is not None and plan.launch.args:     # where the models are found depends on them
            out(report.launch_line(plan) + "\n")
        if ui.verbosity >= 0:       # -q: what needs a look only
            out(table(report.summary_rows(plan), ["action", "files", "size"]) + "\n")
            for line in report.summary_lines(plan, verbose=ui.verbosity > 0):
                out(line + "\n")
        for line in report.name_change_lines(plan):
            out(line + "\n")
        for w in report.warning_lines(plan):
            ui.warn("\n".join(report.wrap(w, (plan.yaml_path, plan.target, *plan.sources), ui.verbosity > 0,
                                           len("warning: "))))
        findings = report.finding_lines(plan.findings, plan.sources)
        if findings and ui.verbosity > 0:
            for line in findings:
                ui.warn(line)
        elif findings:
            from migrate.core.model import ActionKind
            placed = {a.source for a in plan.actions if a.kind not in (ActionKind.SKIP, ActionKind.CONFLICT)}
            held = len({f.path for f in plan.findings if f.blocks and f.path not in placed})
            moved = len({f.path for f in plan.findings if f.path in placed})
            kinds = ", ".join(sorted({f.kind for f in plan.findings}))
            ui.warn(f"the audit found {len(findings)} problem(s) ({kinds}); "
                    + "; ".join(part for part in (f"{held} file(s) stay where they are" if held else "",
                                                  f"{moved} move all the same (--include-suspect)" if moved else "")
                                if part)
                    + " (`comfy-migrate audit` or -v says which)")


@cli.command(context_settings=CONTEXT)
@plan_options
@click.option("--dry-run", is_flag=True, help="Print the plan (exactly what `plan` prints) and stop.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--while-running", is_flag=True,
              help="Run although ComfyUI is running from this folder (restart it afterwards: it reads "
                   "the YAML only at start-up).")
@wait_option
@click.pass_obj
def run(ui: Ui, dry_run: bool, yes: bool, while_running: bool, wait: float, **kw) -> None:
    """Execute the plan: place every model in the target, switch the YAML, quarantine sources.

    Every step is written to the audit log in <target>/.comfy-migrate/runs/ before it is made.
    Running it again after an interruption continues where it stopped. On a store shared by
    several pods it waits for another pod's run, then plans again under the lock.

    \b
    Example:
      comfy-migrate run --comfyui /workspace/runpod-slim/ComfyUI --target /workspace/models --yes
    """
    from migrate.disk import catalogue as store_catalogue
    from migrate.app.execute import execute_plan
    from migrate.disk.journal import find_interrupted
    from migrate.core.comfy import BEGIN_MARK
    from migrate.disk.facts import confirm_beliefs
    from migrate.core.fleet import plan_changes
    fmt = kw.pop("fmt")
    price = kw.pop("price_per_gb_month")
    if fmt == "json" and not yes and not dry_run:
        raise NotConfirmed("run --format json never asks (no summary would be seen before the question)",
                           "pass --yes, or look first with `comfy-migrate plan --format json`")
    from migrate.core.preflight import StoreChanged
    try:
        facts, plan = build(ui, **kw)
    except StoreChanged:
        if dry_run:
            raise
        # A file appeared in the store where this plan places one, after its scan: another pod's
        # run placing it (torture fleet-0040). Wait for that run, then plan against its result.
        take_lock(ui, resolve_target(kw["target"]), "comfy-migrate run (waiting to plan)", wait).release()
        facts, plan = build(ui, **kw)
    if dry_run:
        print_plan(plan, fmt, ui.verbosity > 0, ui.verbosity < 0)
        exit_if_unfit(plan)
        return
    if not plan.has_work and find_interrupted(plan.target, plan.sources, plan.yaml_path) is None:
        clear_stale_lock(ui, plan.target)
        nothing_to_do(ui, plan, facts, fmt, kw)
        return
    running = running_comfyui(kw["comfyui"], plan.yaml_path, while_running, plan.launch)
    show_summary(ui, plan, fmt)
    # Ask before taking the lock: a question must not hold up the other pods.
    confirm(f"Migrate into {plan.target}?", yes)
    confirmed = plan
    while True:
        lock = take_lock(ui, plan.target, "comfy-migrate run", wait)
        try:
            # The plan that runs is made under the lock, against the store as it is now.
            memo = memo_cache(facts)
            facts, plan = build(ui, **kw, cache=memo, again=True)
            stale = confirm_beliefs(plan, (memo, open_cache(kw["no_cache"])))
            if stale:
                for p in stale:
                    ui.warn(f"{report.show(p)}: its bytes are not those its cached digest says (rewritten with "
                            "its times kept, or a reused inode); planned again with what it holds now")
                facts, plan = build(ui, **kw, cache=memo, again=True)
            matters, notes = plan_changes(confirmed, plan)
            if matters and not yes:
                lock.release()
                ui.warn("the pod or the store changed since the plan (another pod's run, or files changed "
                        "meanwhile); the plan is now different:")
                for m in matters:
                    ui.warn(f"  {report.show(m)}")
                show_summary(ui, plan, fmt)
                confirm(f"Migrate into {plan.target} with this new plan?", False)
                confirmed = plan
                continue
            for m in matters:
                ui.warn(f"changed since the plan: {report.show(m)}")
            for n in notes:
                ui.info(f"note: {n}")
            if not plan.has_work and find_interrupted(plan.target, plan.sources, plan.yaml_path) is None:
                nothing_to_do(ui, plan, facts, fmt, kw)
                return
            def catalogue(run_id: str) -> None:      # before the log closes: part of finishing the run
                try:
                    _, cat_warning = store_catalogue.refresh(
                        plan.target, *store_catalogue.known_from(plan.target, facts.target_scan, plan.actions, run_id))
                    if cat_warning:
                        ui.debug(cat_warning)
                except OSError as exc:
                    ui.warn(f"could not update the store's catalogue ({fsops.describe(exc)}); the next plan hashes instead")
            try:
                with ui.progress("copying") as (on_total, on_bytes):
                    on_total(plan.bytes_to_copy)
                    rep = execute_plan(plan, sys.argv, on_bytes, lock=lock, before_close=catalogue)
            except KeyboardInterrupt:
                raise run_interrupted(plan, kw) from None
        finally:
            lock.release()
        break
    left = stayed_behind(plan, facts)
    try:     # the page of what ran, beside its log (the run is done: a failure here costs only the page)
        page = write_report(ui, plan, kw, price, run_report_path(rep.log_path), made=f"run {rep.run_id}",
                            announce=False, done={"run": rep.run_id, "placed": rep.placed,
                                                  "copied_bytes": rep.copied_bytes, "removed": rep.removed,
                                                  "stayed": len(left), "quarantine_bytes": rep.quarantine_bytes})
    except (MigrateError, OSError) as exc:
        ui.warn(str(exc))
        page = None
    except Exception as exc:         # noqa: BLE001 (the run has migrated: a bad page never hides its undo line)
        ui.warn(f"the run's report page was not written ({type(exc).__name__}); the run itself is done")
        page = None
    deploy = report.deploy_doc(plan) if plan.yaml_after is not None and (rep.yaml_written or
                                                                            not plan.yaml_changes) else {}
    if fmt == "json":
        out(report.dumps({"run": rep.run_id, "log": rep.log_path, "resumed": rep.resumed,
                          "placed": rep.placed, "copied_bytes": rep.copied_bytes, "removed": rep.removed,
                          "quarantine_bytes": rep.quarantine_bytes, "yaml_written": rep.yaml_written,
                          "problems": [{"path": p.path, "message": p.message} for p in rep.problems],
                          "deploy": deploy, "report": page, "restart_comfyui": rep.yaml_written,
                          "comfyui_running": [r.pid for r in running],
                          "comfyui": plan.launch.doc() if plan.launch is not None else None,
                          "findings": [report.finding_doc(f) for f in plan.findings],
                          "stayed": [{"path": p, "why": w} for p, w in left]}))
    else:
        out(f"\nrun {rep.run_id}{' (continued)' if rep.resumed else ''}: placed {rep.placed} files, "
            f"copied {report.human(rep.copied_bytes)}, removed {rep.removed} source names\n")
        tgt = shlex.quote(report.show(plan.target))
        quiet = ui.verbosity < 0      # -q: what was done, how to undo it, the restart
        if rep.quarantine_bytes:
            out(f"quarantine holds {report.human(rep.quarantine_bytes)}; free it with: "
                f"comfy-migrate purge {rep.run_id} --target {tgt}\n")
        if not quiet:
            out(f"audit log: {report.show(rep.log_path)}\n")
        out(f"undo with: comfy-migrate rollback {rep.run_id} --target {tgt}\n")
        if page and not quiet:
            out(f"report: {report.show(page)}\n")
        first = plan.yaml_changes and BEGIN_MARK not in (plan.yaml_before or "")
        if deploy and (first or ui.verbosity > 0) and not quiet:
            out("\nDockerfile (an image carrying ComfyUI, the models on the volume):\n")
            out("".join(f"  {report.show(line)}\n" for line in deploy["dockerfile"]))
            out("".join(f"{line}\n" for note in deploy["notes"] for line in deploy_note(note, plan, ui.verbosity > 0)))
        if deploy and not quiet:
            out("check once ComfyUI runs:\n" + "".join(f"  {report.show(line)}\n" for line in deploy["check"]))
        if rep.yaml_written:
            out("\nrestart ComfyUI now: it reads extra_model_paths.yaml only at start-up"
                + (f" (still running with the old folders: {', '.join(r.describe() for r in running)})"
                   if running else "") + "\n")
    for p in rep.problems:
        ui.warn(f"{report.show(p.path)}: {p.message}")
    for n in rep.notes:
        ui.warn(report.show(n))
    if left and fmt == "table":
        ui.warn(f"{stayed_summary(left, len('warning: '))};")      # the command on a line of its own: whole
        shell.err(f"  `comfy-migrate plan{given(kw, plan.target)}` says why for each")
    if rep.problems or left:
        sys.exit(ExitCode.PROBLEMS)


# --- attach --------------------------------------------------------------------------------------

@cli.command(context_settings=CONTEXT)
@click.option("--comfyui", envvar="COMFYUI_DIR", callback=nonempty,
              help="The ComfyUI folder to point at the store. Default: $COMFYUI_DIR, "
                   "/workspace/runpod-slim/ComfyUI, /workspace/ComfyUI.")
@target_option
@click.option("--base-path", default=None, envvar="COMFY_MIGRATE_BASE_PATH", callback=base_path_spec,
              help="base_path written to the YAML: absolute, relative (to the YAML's folder) or env:VAR. "
                   "Default: the form the YAML's comfy-migrate section has, else absolute.")
@click.option("--dry-run", is_flag=True, help="Print what would change (the YAML diff, folders, name changes) and stop.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              envvar="COMFY_MIGRATE_FORMAT", show_default=True, help="Output format.")
@wait_option
@launch_option
@click.pass_obj
def attach(ui: Ui, comfyui, target, base_path, dry_run, yes, fmt, wait, comfyui_args) -> None:
    """Point this ComfyUI at an existing store; moves no file, reads none.

    For a container rebuilt from its image (a redeploy), a second ComfyUI install, a ComfyUI
    update or a worker mounting the volume elsewhere: writes the comfy-migrate section of
    <comfyui>/extra_model_paths.yaml from what the store holds and this ComfyUI's own categories
    (the store first for each, plus download_model_base), makes the store's missing category
    folders, and leaves the image's own model files where they are. A start script can call it at
    every boot: on an attached pod it writes nothing. Journalled like a run: `rollback` undoes it.

    \b
    Example:
      comfy-migrate attach --comfyui /workspace/runpod-slim/ComfyUI --target /workspace/models --yes
      comfy-migrate attach --comfyui /ComfyUI --target /runpod-volume/models --yes     # a worker
    """
    from migrate.app.attach import gather_attach, plan_attach
    from migrate.core.comfy import find_comfyui
    if fmt == "json" and not yes and not dry_run:
        raise NotConfirmed("attach --format json never asks", "pass --yes, or look first with --dry-run")
    home = find_comfyui(comfyui)
    shell.adopt_comfyui(home, ui)
    target = resolve_target(target)
    if not os.path.isdir(target):
        raise BadInput(f"no store at {target}: attach points ComfyUI at a store that exists",
                       "pass the store's folder as --target, or migrate first with `comfy-migrate run`")

    launch = shell.resolve_launch(home, comfyui_args, ui)

    def planned():
        import dataclasses
        facts = gather_attach(home, target, base_path, launch)
        got = plan_attach(facts)
        return facts, dataclasses.replace(got, plan=got.plan._replace(launch=launch))     # logged, as by run

    facts, got = planned()
    plan = got.plan
    for p in (p for s in (facts.models, facts.store) for p in s.problems):
        ui.warn(f"{report.show(p.path)}: {p.message}")
    doc = {"comfyui": home, "target": target, "yaml": plan.yaml_path, "base_path": plan.base_path,
           "base_path_mode": plan.policy.base_path, "store_folders": list(plan.store_folders),
           "name_changes": [report.name_change_doc(c) for c in plan.name_changes],
           "not_compared": [report.name_change_doc(c) for c in got.not_compared],
           "warnings": list(plan.warnings), "dry_run": dry_run}
    if not plan.has_work:
        if fmt == "json":
            out(report.dumps(dict(doc, run=None, nothing_to_do=True, yaml_written=False)))
        else:
            ui.info(f"attached already: {report.show(plan.yaml_path)} searches {report.show(target)} first; "
                    "nothing written")
        return
    if fmt == "table":
        verbose = ui.verbosity > 0
        room = (report.WIDTH - 54) // 2        # the two paths share what the words leave
        out(f"attach {report.show(home) if verbose else report.middle(home, room)} to the store "
            f"{report.show(target) if verbose else report.middle(target, room)} (no model file is moved or read)\n")
        diff = report.yaml_diff(plan)
        if diff:
            out(f"\nextra_model_paths.yaml change:\n{diff if verbose else fit_lines(diff)}")
        if plan.store_folders:
            import textwrap
            out("\n" + "\n".join(textwrap.wrap(f"store folders to make ({len(plan.store_folders)}): " + ", ".join(
                report.show(os.path.basename(d)) for d in plan.store_folders), report.WIDTH, subsequent_indent="  ",
                break_long_words=False, break_on_hyphens=False)) + "\n")
        for line in report.name_change_lines(plan, when="after attach"):
            out(line + "\n")
        for w in plan.warnings:
            ui.warn(w)
    if dry_run:
        if fmt == "json":
            out(report.dumps(dict(doc, run=None, nothing_to_do=False, yaml_written=False)))
        return
    confirm(f"Point {home} at {target}?", yes)
    from migrate.app.execute import execute_plan
    from migrate.disk.journal import find_interrupted      # only with work to do: start-up
    with take_lock(ui, target, "comfy-migrate attach", wait) as lock:
        facts, got = planned()          # again under the lock: the store as it is now
        plan = got.plan
        if find_interrupted(target, plan.sources, plan.yaml_path) is not None:
            raise BadInput(f"an interrupted run of {plan.yaml_path} is pending in {target}",
                           "finish it with `comfy-migrate run` (same options), or roll it back first")
        rep = None
        if plan.has_work:
            rep = execute_plan(plan, sys.argv, lock=lock, kind="attach")
    running = []
    try:
        from migrate.disk.running import find_running
        running = find_running(home)
    except OSError:
        pass
    if fmt == "json":
        out(report.dumps(dict(doc, run=rep.run_id if rep else None, nothing_to_do=rep is None,
                              log=rep.log_path if rep else None, yaml_written=bool(rep and rep.yaml_written),
                              store_folders=list(plan.store_folders),
                              problems=[{"path": p.path, "message": p.message} for p in (rep.problems if rep else [])],
                              restart_comfyui=bool(rep and rep.yaml_written and running))))
    elif rep is not None:
        tgt = shlex.quote(report.show(target))
        out(f"\nattach {rep.run_id}: {'YAML written' if rep.yaml_written else 'YAML unchanged'}, "
            f"{len(plan.store_folders)} store folder(s) made\n"
            f"undo with: comfy-migrate rollback {rep.run_id} --target {tgt}\n")
        if rep.yaml_written and running:
            out(f"restart ComfyUI now: it reads extra_model_paths.yaml only at start-up "
                f"({', '.join(r.describe() for r in running)})\n")
    for p in (rep.problems if rep else []):
        ui.warn(f"{report.show(p.path)}: {p.message}")
    for n in (rep.notes if rep else []):
        ui.warn(report.show(n))
    if rep is not None and rep.problems:
        sys.exit(ExitCode.PROBLEMS)


def deploy_note(note: str, plan, verbose: bool) -> list:
    """A Dockerfile note as comment lines of report.WIDTH columns, its paths shortened in the middle
    (-v: whole; the COPY line above names the YAML whole)."""
    import textwrap
    note = report.show(note)
    if not verbose:
        for path in (plan.yaml_path, plan.target):
            if path:
                note = note.replace(report.show(path), report.middle(path, 60))
    return textwrap.wrap(note, report.WIDTH, initial_indent="  # ", subsequent_indent="  #   ",
                         break_long_words=False, break_on_hyphens=False)


def undo_line(u, verbose: bool) -> str:
    """A rollback step in words, each path shortened in the middle so the line fits report.WIDTH
    columns (-v: whole)."""
    import re
    from migrate.core.steps import Op
    text = report.show(u.describe())
    op = Op.of({"op": u.op})
    if verbose or len(text) <= report.WIDTH - 2 or op is None:
        return text
    fields = re.findall(r"{(\w+)}", op.undo_text)
    room = (report.WIDTH - 2 - len(re.sub(r"{\w+}", "", op.undo_text))) // max(1, len(fields))
    return op.describe_undo({k: report.middle(v, max(24, room)) if k in fields and isinstance(v, str) else v
                             for k, v in u.rec.items()})


def stayed_behind(plan, facts) -> list:
    """(path, why) of each model file the run left where it is: a conflict, a name the store cannot
    hold or one that folds onto another there (storerules.stay_kind), a file the audit held back, an unreadable file or one that changed while scanned, a name that is not UTF-8, a model
    file in no category folder. Exit 1 says so (README: exit codes)."""
    from migrate.core.comfy import MODEL_EXTENSIONS
    from migrate.core.model import ActionKind, Status
    why = {Status.SUSPECT: "held-back", Status.UNREADABLE: "unreadable", Status.CHANGED: "changed",
           Status.BAD_NAME: "bad-name"}
    from migrate.core.storerules import stay_kind
    left = {a.source: stay_kind(a) for a in plan.actions if a.kind is ActionKind.CONFLICT}
    for s in facts.sources:
        for r in s.records:
            if r.status in why:
                left.setdefault(r.path, why[r.status])
            elif r.status is Status.UNCATEGORISED and os.path.splitext(r.rel)[1].lower() in MODEL_EXTENSIONS:
                left.setdefault(r.path, "uncategorised")      # a model file directly under models/
        for p in s.problems:            # an unreadable file is a record and a problem: said once
            left.setdefault(p.path, "unreadable")
    return list(left.items())


def stayed_summary(left: list, lead: int = 0) -> str:
    """'3 model file(s) stayed where they are, not in the store (2 conflict, 1 suspect; e.g. conflict: PATH)',
    PATH shortened in the middle so that, after `lead` characters, the line fits report.WIDTH columns."""
    kinds = Counter(why for _, why in left)
    head = (f"{len(left)} model file(s) stayed where they are, not in the store ("
            + ", ".join(f"{n} {why}" for why, n in sorted(kinds.items())) + f"; e.g. {left[0][1]}: ")
    return head + report.middle(left[0][0], max(24, report.WIDTH - lead - len(head) - 2)) + ")"


def run_interrupted(plan, kw: dict):
    """Ctrl-C during a run: whether it changed anything, and the two commands that finish or undo it."""
    from migrate.core.errors import Interrupted
    from migrate.disk.journal import find_interrupted
    log = find_interrupted(plan.target, plan.sources, plan.yaml_path)
    if log is None:
        return Interrupted("the run stopped before its first step; nothing was changed")
    rid = os.path.basename(log)[:-len(".jsonl")]
    return Interrupted(f"run {rid} stopped part-way (every step it took is in its log, nothing is lost)",
                       f"`comfy-migrate run{given(kw, plan.target)}` continues it, "
                       f"`comfy-migrate rollback {rid} --target {shlex.quote(report.show(plan.target))}` undoes it")


def given(kw: dict, target: str | None = None) -> str:
    """' --comfyui C --source S --yaml Y --target T' of what this command was given (target: as
    resolved), so a printed command acts on this pod and store, never on the defaults under /workspace."""
    parts = []
    if kw.get("comfyui"):
        parts += ["--comfyui", os.path.abspath(kw["comfyui"])]
    for src in kw.get("sources") or ():
        parts += ["--source", os.path.abspath(src)]
    if kw.get("yaml_path"):
        parts += ["--yaml", os.path.abspath(kw["yaml_path"])]
    if target or kw.get("target"):
        parts += ["--target", target or os.path.abspath(kw["target"])]
    return "".join(" " + shlex.quote(report.show(p)) for p in parts)


def nothing_to_do(ui: Ui, plan, facts, fmt: str, kw: dict | None = None) -> None:
    """The end of a run with nothing to do: said (JSON too), exit 1 if files stayed behind."""
    left = stayed_behind(plan, facts)
    if fmt == "json":
        out(report.dumps({"run": None, "nothing_to_do": True, "stayed": [{"path": p, "why": w} for p, w in left],
                          "findings": [report.finding_doc(f) for f in plan.findings]}))
    if left:
        ui.warn(f"nothing to do, but {stayed_summary(left, len('warning: nothing to do, but '))};")
        shell.err(f"  `comfy-migrate plan{given(kw or {}, plan.target)}` says why for each")
    else:
        ui.info("nothing to do: the target is up to date")
    for line in report.warning_lines(plan) + report.finding_lines(plan.findings, plan.sources):
        ui.debug(f"note: {line}")      # what `plan` said already; -v repeats it
    if left:
        sys.exit(ExitCode.PROBLEMS)


def running_comfyui(comfyui, yaml_path, allowed: bool, launch=None):
    """The ComfyUI processes running from this pod's ComfyUI folder; refuses (exit 3) while one
    runs unless `allowed`: it would keep serving the old folders until restarted. The refusal says
    which options to pass once it is stopped (then /proc no longer shows them)."""
    from migrate.disk.facts import find_comfyui
    from migrate.disk.running import find_running
    try:
        home = find_comfyui(comfyui)
    except MigrateError:
        home = os.path.dirname(yaml_path) if yaml_path else None
    running = find_running(home) if home else []
    if running and not allowed:
        again = ""
        if launch is not None and launch.args:
            again = (f"; once it is stopped, pass its options: comfy-migrate run --comfyui {shlex.quote(home)} "
                     f"--comfyui-args {shlex.quote(launch.shell_args())}")
        raise BadInput(f"ComfyUI is running from {home} ({'; '.join(r.describe() for r in running)}) and reads "
                       "extra_model_paths.yaml only at start-up",
                       "stop it, run again, then start it" + again + "; or pass --while-running and restart it afterwards")
    return running


# --- rollback, history, purge, verify --------------------------------------------------------------

def comfyui_option(f):
    return click.option("--comfyui", envvar="COMFYUI_DIR", callback=nonempty,
                        help="The ComfyUI folder: this pod's runs are those that wrote its "
                             "extra_model_paths.yaml. Default: as for `run`.")(f)


def require_store(target: str, what: str = "no runs in") -> str:
    """Read-only commands on a folder no run ever used say so (exit 6) rather than 'no runs yet'."""
    from migrate.core.model import STATE_DIR
    if not os.path.isdir(os.path.join(target, STATE_DIR)):
        raise BadLog(f"{what} {target} (it has no {STATE_DIR} folder): is --target right?",
                     "pass the store's folder as --target (default: $COMFY_MIGRATE_TARGET, else /workspace/models)")
    return target


def pod_log(ui: Ui, target: str, comfyui, live: bool, all_logs: bool = False, yaml: str | None = None):
    """The log of this pod's newest run (live: not rolled back; all_logs: the logs of all its runs, oldest
    first). A pod is its ComfyUI folder's YAML on the volume, not its host name (a redeploy gives a
    new one): verify.pod_runs decides."""
    from migrate.disk.facts import find_comfyui
    from migrate.disk.journal import RUNS_DIR
    from migrate.core.model import STATE_DIR
    from migrate.app.rollback import NothingToRollBack, all_runs, run_state
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
            others = [(rid, rec[0].get("yaml")) for rid, rec in every if rec[0].get("host") == host
                      and rec[0].get("yaml") and yaml_path and os.path.realpath(rec[0]["yaml"]) != os.path.realpath(yaml_path)
                      and not rolled_back(rid)]
            if others:
                rid, other = others[-1]
                raise BadLog(f"every run that wrote {yaml_path} is rolled back already, but run {rid} of this host "
                             f"wrote {other} and is not", f"comfy-migrate rollback --yaml {shlex.quote(other)} "
                             f"--target {shlex.quote(target)} (or name the run: comfy-migrate rollback {rid})")
            raise NothingToRollBack(f"every run of this pod in {target} is rolled back already")
    ui.debug(f"this pod's newest run: {pick} ({how})")
    return os.path.join(logs, f"{pick}.jsonl")


def newer_pod_runs(records, live, target: str):
    """The live runs of the same pod (its YAML) newer than this run, when this run wrote the YAML:
    their YAML changes were made on top of its section, and their names resolve through it."""
    from migrate.disk.journal import group_steps
    from migrate.core.steps import Op
    from migrate.app.verify import pod_runs
    head = records[0]
    steps = group_steps(records)
    if not head.get("yaml") or not any(b["op"] == Op.YAML and b["step"] in steps.done for b in steps.begins):
        return []
    # This run is among the live ones, so pod_runs matches by the YAML (never its fallbacks).
    mine, _ = pod_runs(live, target, head["yaml"], "")
    if not any(rid == head["run"] for rid, _ in mine):
        return []
    # Another install whose YAML is a symlink to the same file (another pod) resolves through this
    # section as well: its newer runs count too.
    real = os.path.realpath(head["yaml"])
    shared = [rid for rid, rec in live if isinstance(rec[0].get("yaml"), str)
              and os.path.realpath(rec[0]["yaml"]) == real]
    return sorted({rid for rid, _ in mine if rid > head["run"]} | {rid for rid in shared if rid > head["run"]})


def sweep_probe_leftovers(target: str, comfyui) -> None:
    """Scratch files and folders of a probe killed mid-way (a plan's or a run's, before any log):
    in the store (or the folder it would be made in) and in this pod's models folder, found by
    their name and removed, the folder's mtime put back (fsops.sweep_probes)."""
    from migrate.disk.facts import find_comfyui
    folders = [fsops.nearest_existing(target)]
    try:
        folders.append(os.path.join(find_comfyui(comfyui), "models"))
    except MigrateError:
        pass
    for f in folders:
        fsops.sweep_probes(f)
def format_option(f):
    return click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
                        envvar="COMFY_MIGRATE_FORMAT", help="Output format.")(f)


@cli.command(context_settings=CONTEXT)
@click.argument("run_ref", metavar="[RUN]", required=False)
@target_option
@comfyui_option
@click.option("--dry-run", is_flag=True, help="Print what would be undone; change nothing.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--yaml", "yaml_path", envvar="COMFY_MIGRATE_YAML", callback=nonempty,
              help="The extra_model_paths.yaml the run wrote (`run --yaml FILE`): picks that pod's newest run. "
                   "Default: <comfyui>/extra_model_paths.yaml.")
@wait_option
@format_option
@click.pass_obj
def rollback(ui: Ui, run_ref, target, comfyui, dry_run, yes, wait, fmt, yaml_path) -> None:
    """Undo a run (default: this pod's newest not rolled back) from its audit log.

    Files go back to their old places, links and folders the run made are removed, the YAML gets
    its old bytes back. A file changed since the run is never overwritten: it is reported and kept.
    Interrupted? Run it again: it continues. A stored file another run relies on (on a store
    shared by pods) stays in the store; this run's source gets its name back.

    \b
    Example:
      comfy-migrate rollback --target /workspace/models --dry-run
      comfy-migrate rollback 20261127T101500Z-3fa9c1 --target /workspace/models --yes
    """
    from migrate.disk import catalogue as store_catalogue
    from migrate.core.fleet import droppable, reliance
    from migrate.app.rollback import (NothingToRollBack, execute_rollback, find_log, foresee, kept_records, left_folders,
                                  live_runs, load_run, plan_rollback, settle, store_facts, users_of)
    if fmt == "json" and not yes and not dry_run:
        raise NotConfirmed("rollback --format json never asks (no summary would be seen before the question)",
                           "pass --yes, or look first with `comfy-migrate rollback --dry-run --format json`")
    if not dry_run:
        sweep_probe_leftovers(resolve_target(target), comfyui)
    target = require_store(resolve_target(target), "no run to roll back in")
    try:
        log = find_log(target, run_ref) if run_ref else pod_log(ui, target, comfyui, live=True, yaml=yaml_path)
    except NothingToRollBack as exc:
        if fmt == "json":
            out(report.dumps({"run": None, "nothing_to_roll_back": True, "message": str(exc)}))
        else:
            ui.info(str(exc))
        clear_stale_lock(ui, target)
        return
    except BadLog:      # no run to undo (e.g. one killed writing its first record): still no stale lock left
        clear_stale_lock(ui, target)
        raise
    records = load_run(log)
    home = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(log))))   # <target>/.comfy-migrate/runs
    if os.path.realpath(records[0]["target"]) != os.path.realpath(home):
        raise BadInput(f"run {records[0]['run']} was made with the target at {records[0]['target']}, its log is "
                       f"now in {home} (the volume is mounted elsewhere): the log's paths do not apply here",
                       f"roll back where the volume is mounted as it was ({records[0]['target']})")
    head = records[0]
    if head.get("host") != os.uname().nodename and not all(os.path.isdir(d) for d in head.get("sources") or []):
        raise BadInput(f"run {head['run']} was made on host {head.get('host')} and its sources are not here",
                       "roll it back on that pod (its sources and YAML live there)")
    newer = newer_pod_runs(records, live_runs(target), target)
    if newer:
        raise BadInput(f"run {head['run']} wrote the YAML's comfy-migrate section, and newer run(s) of this pod not "
                       f"rolled back build on it: {', '.join(newer)}",
                       "roll back the newest first: " + ", then ".join(
                           f"comfy-migrate rollback {rid} --target {shlex.quote(report.show(target))}"
                           for rid in list(reversed(newer)) + [head["run"]]))
    fs_now, seen = store_facts(target, records)
    undos = plan_rollback(records, seen)
    if dry_run or not yes:
        relied = reliance(live_runs(target), records[0]["run"])     # shown now, decided under the lock
        kept = [u for u in undos if users_of(u, relied, records[0]["target"])]
        doomed = foresee(undos) if dry_run else {}
        if dry_run and fmt == "json":
            out(report.dumps({"run": records[0]["run"], "dry_run": True, "steps": [
                {"op": u.op, "what": doomed.get(u.step) or u.describe(), "cannot": bool(doomed.get(u.step)),
                 "kept_for": users_of(u, relied, records[0]["target"])}
                for u in undos]}))
        elif dry_run:
            out(f"rollback of run {records[0]['run']} ({len(undos)} steps, newest first):\n")
            for u in undos:
                users = users_of(u, relied, records[0]["target"])
                out(f"  {report.show(doomed[u.step]) if u.step in doomed else undo_line(u, ui.verbosity > 0)}"
                    + (f" -> kept in the store instead: run(s) {', '.join(users)} rely on it" if users else "") + "\n")
            if doomed:
                shell.err(f"warning: {len(doomed)} source file(s) cannot be recreated: their stored copies are gone "
                          "(the rollback would skip them and exit 1)")
        if dry_run:
            if doomed:
                sys.exit(ExitCode.PROBLEMS)
            return
        out(f"rollback of run {records[0]['run']}: {report.rollback_summary(undos, len(kept))}\n"
            "(`--dry-run` lists every step)\n")
    confirm(f"Undo run {records[0]['run']}?", yes)
    with take_lock(ui, target, "comfy-migrate rollback", wait, room=True):
        try:
            fsops.remember_weakest(target, fs_now)
        except OSError:
            pass        # a belief for later plans; this rollback uses it already
        live = live_runs(target)
        relied = reliance(live, records[0]["run"])
        handed = droppable(kept_records(target), settle(records, target), live)
        def catalogue() -> None:
            try:
                store_catalogue.refresh(target, {}, {})
            except OSError as exc:
                ui.warn(f"could not update the store's catalogue ({fsops.describe(exc)})")
        with ui.progress("restoring") as (_, on_bytes), interrupted_rollback(records[0]["run"], target), \
                kept_reads():
            rep = execute_rollback(log, records, undos, on_bytes, relied, shared=any(
                rid != records[0]["run"] for rid, _ in live), handed=handed, before_close=catalogue,
                left_folders=left_folders(target, records[0]["run"]))
    if fmt == "json":
        out(report.dumps({"run": rep.run_id, "log": rep.log_path, "resumed": rep.resumed, "undone": rep.undone,
                          "skipped": [{"path": p.path, "message": p.message} for p in rep.skipped],
                          "kept": [{"path": p.path, "message": p.message} for p in rep.kept],
                          "not_back": [{"path": p.path, "message": p.message} for p in rep.stranded]}))
    else:
        out(f"run {rep.run_id} {'partly ' if rep.stranded else ''}rolled back: {rep.undone} steps undone, "
            f"{len(rep.skipped)} skipped\n")
        for p in rep.kept:
            out(f"  {report.show(p.path)}: {p.message}\n")
    for p in rep.skipped:
        ui.warn(f"{report.show(p.path)}: {p.message}")
    if rep.stranded:
        for p in rep.stranded:
            ui.warn(f"{report.show(p.path)}: {p.message}")
        ui.warn(f"rollback not finished: {len(rep.stranded)} model file(s) are not back in the pod; the YAML's "
                "comfy-migrate section stays, so their names keep loading from the store. Fix the cause above, "
                f"then run `comfy-migrate rollback {rep.run_id} --target {shlex.quote(report.show(target))} --yes` again")
    if rep.skipped or rep.stranded:
        sys.exit(ExitCode.PROBLEMS)


@contextlib.contextmanager
def kept_reads():
    """The files whose bytes rollback and purge re-read (to compare with the log) go into the user's
    digest cache with their SHA-256 and BLAKE3, as scan, verify and audit's reads do (issue 24)."""
    from migrate.disk.hashing import keep_reads
    try:
        yield
    finally:
        keep_reads(open_cache(False))


@contextlib.contextmanager
def interrupted_rollback(rid: str, target: str):
    """Ctrl-C during a rollback: the same command again finishes it."""
    from migrate.core.errors import Interrupted
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"the rollback of run {rid} stopped part-way (its steps are logged)",
                          f"`comfy-migrate rollback {rid} --target {shlex.quote(report.show(target))} --yes` "
                          "again finishes it") from None


@cli.command("history", context_settings=CONTEXT)
@target_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              envvar="COMFY_MIGRATE_FORMAT")
def history_cmd(target, fmt) -> None:
    """One row per run in the target: id, time, host, files, bytes, state.

    \b
    Example:
      comfy-migrate history --target /workspace/models
    """
    from migrate.app.rollback import history
    rows = history(require_store(resolve_target(target)))
    if fmt == "json":
        out(report.dumps(rows))
    elif rows:
        out(table([[r["run"], r["time"], r["host"],
                    f"{r['files']}" + (f" ({r['relied']} already stored)" if r["relied"] else ""),
                    report.human(r["bytes"]), r["state"]]
                   for r in rows], ["run", "time", "host", "files", "size", "state"], names=(2,)) + "\n")
    else:
        out("no runs yet\n")


@cli.command("catalogue", context_settings=CONTEXT)
@target_option
@click.option("--format", "fmt", type=click.Choice(["json", "csv"]), default="json", show_default=True,
              help="Output format.")
def catalogue_cmd(target, fmt) -> None:
    """Every stored model with the hashes other tools look it up by.

    Per stored file: its category, every name that loads the same bytes, size, xxh3, SHA-256,
    BLAKE3 (as ComfyUI writes it, blake3:<hex>), AutoV2 (A1111/Civitai's short hash) and the
    hashes a safetensors header names (modelspec.hash_sha256, sshs_model_hash). Reads no model's
    bytes: hashes come from the store's catalogue, as far as it still vouches for each file, else
    from this user's digest cache (e.g. a `verify` read a file stored before SHA-256 was computed).

    \b
    Example:
      comfy-migrate catalogue --target /workspace/models > models.json
      comfy-migrate catalogue --format csv > models.csv
    """
    from migrate.disk import catalogue as store_catalogue
    rows, warning = store_catalogue.export(require_store(resolve_target(target)), open_cache(False))
    if warning:
        click.echo(f"warning: {warning}", err=True)
    if fmt == "json":
        out(report.dumps(rows))
    else:
        import csv
        import io
        buf = io.StringIO()
        cols = ["category", "name", "names", "size", "xxh3", "sha256", "blake3", "autov2", *store_catalogue.HEADER_HASHES,
                "path"]
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({**{k: ("" if v is None else v) for k, v in r.items()}, "names": ";".join(r["names"])})
        out(buf.getvalue())
    unknown, partial = store_catalogue.lacking(rows)
    if unknown or partial:
        click.echo(f"{unknown + partial} of {len(rows)} stored file(s) lack SHA-256/BLAKE3 ({unknown} not in the "
                   f"catalogue as they are now, {partial} hashed before this version): they get them the next time "
                   "their bytes are read (a run, `verify`, `audit`)", err=True)


@cli.command(context_settings=CONTEXT)
@click.argument("run_ref", metavar="[RUN]", required=False)
@target_option
@comfyui_option
@click.option("--permanent", is_flag=True, help="Delete instead of moving to the trash.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@wait_option
@format_option
@click.pass_obj
def purge(ui: Ui, run_ref, target, comfyui, permanent, yes, wait, fmt) -> None:
    """Empty the quarantine of a run (default: of every run of this pod) into the trash.

    Each quarantined file and the stored copy it was judged identical to are first re-hashed; a
    file is freed only if both hold the logged content (else it is kept and reported). Rollback
    still works afterwards (it recreates files from the stored copies). The trash is on the
    quarantine's own volume (its .Trash-UID folder) unless that is the home folder's: it is named.

    \b
    Example:
      comfy-migrate purge --target /workspace/models --yes
    """
    from migrate.app.rollback import find_log, load_run, purge_check, quarantined
    target = require_store(resolve_target(target))
    logs = [find_log(target, run_ref)] if run_ref else pod_log(ui, target, comfyui, live=False, all_logs=True)
    per_run = []
    for log in logs:
        records = load_run(log)
        items = [q for q in quarantined(records) if os.path.lexists(q["q"])]
        if items:
            per_run.append((records[0]["run"], items))
    items = [q for _, qs in per_run for q in qs]
    total = sum(q["size"] for q in items)
    if not items:
        if fmt == "json":
            out(report.dumps({"runs": [], "files": 0, "freed_bytes": 0, "kept": [], "permanent": permanent,
                              "trash": []}))
        else:
            out(f"the quarantine of {'this run' if run_ref else 'every run of this pod'} is empty\n")
        return
    if fmt == "table":
        for rid, qs in per_run:
            out(f"run {rid}: {len(qs)} quarantined file(s), {report.human(sum(q['size'] for q in qs))}\n")
    confirm(f"{'Delete' if permanent else 'Trash'} {len(items)} quarantined files ({report.human(total)}) of "
            f"{len(per_run)} run(s)?", yes)
    freed, kept, trash = 0, [], set()
    with take_lock(ui, target, "comfy-migrate purge", wait), kept_reads():
        for q in items:
            why = purge_check(q)
            if why:
                ui.warn(f"{report.show(q['q'])}: {why}; kept")
                kept.append({"path": q["q"], "why": why})
                continue
            try:
                st = os.lstat(q["q"])
                if permanent:
                    os.unlink(q["q"])
                else:
                    from send2trash import send2trash
                    where = trash_of(q["q"])
                    send2trash(q["q"])
                    trash.add(where)
                if st.st_nlink == 1:      # its last name: the bytes are freed (two names count once)
                    freed += q["size"]
            except Exception as exc:   # send2trash raises many kinds; the file simply stays
                ui.warn(f"{report.show(q['q'])}: cannot use the trash ({exc}); kept "
                        "(use --permanent to delete instead)")
                kept.append({"path": q["q"], "why": f"cannot use the trash ({exc})"})
    if fmt == "json":
        out(report.dumps({"runs": [rid for rid, _ in per_run], "files": len(items), "freed_bytes": freed,
                          "kept": kept, "permanent": permanent, "trash": sorted(trash)}))
    else:
        verb = "deleted" if permanent else "moved to the trash"
        out(f"{report.human(freed)} {verb}; {len(kept)} files kept\n")
        for where in sorted(trash):
            out(f"trash: {report.show(where)}\n  (empty it to free the space: its files are still on that disk)\n")
    if kept:
        sys.exit(ExitCode.PROBLEMS)


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


@cli.command(context_settings=CONTEXT)
@click.argument("run_ref", metavar="[RUN]", required=False)
@click.option("--comfyui", envvar="COMFYUI_DIR", callback=nonempty, help="The ComfyUI folder (the folder of its main.py).")
@target_option
@click.option("--comfyui-url", metavar="URL",
              help="Also ask a running ComfyUI (URL/object_info) whether its loaders list each name.")
@click.option("--quick", is_flag=True,
              help="Compare each file's size and mtime with the log instead of re-hashing it (for huge "
                   "stores; a rewrite that keeps both passes).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              envvar="COMFY_MIGRATE_FORMAT")
@launch_option
@click.pass_obj
def verify(ui: Ui, run_ref, comfyui, target, comfyui_url, quick, fmt, comfyui_args) -> None:
    """Re-hash every model this pod's runs took out of its sources; ComfyUI must find each there first.

    Covers every run of this pod not rolled back: the runs that wrote <comfyui>/extra_model_paths.yaml
    (without a ComfyUI folder: the runs whose sources are all here, else this host's). Checked:
    the files they placed, the sources they removed because the store already held them, and
    files a rollback kept in the store for them. A run id checks that run alone.

    \b
    Example:
      comfy-migrate verify --comfyui /workspace/runpod-slim/ComfyUI --target /workspace/models
      comfy-migrate verify --quick                  # sizes and mtimes only: no file is read
      comfy-migrate verify --comfyui-url http://127.0.0.1:8188
    """
    from migrate.disk import catalogue as store_catalogue
    from migrate.disk.journal import RUNS_DIR
    from migrate.core.model import STATE_DIR
    from migrate.app.rollback import check_log, find_log, kept_records, live_runs, load_run
    from migrate.app.verify import pod_runs, verify_pod
    target = require_store(resolve_target(target))
    home = None
    try:
        from migrate.disk.facts import find_comfyui
        home = find_comfyui(comfyui)
    except MigrateError:
        pass
    shell.adopt_comfyui(home, ui)
    if run_ref:
        records = load_run(find_log(target, run_ref))
        runs = [(records[0]["run"], records)]
    else:
        host = os.uname().nodename
        yaml_path = os.path.join(home, "extra_model_paths.yaml") if home else None
        runs, how = pod_runs(live_runs(target), target, yaml_path, host)
        logs = os.path.join(target, STATE_DIR, RUNS_DIR)
        if not runs:
            raise BadLog(f"no run of this pod to verify in {logs} (none not rolled back wrote "
                         f"{yaml_path or 'a YAML here'}, has its sources here or ran on host {host})",
                         "pass --comfyui DIR, or name the run (see `comfy-migrate history --target DIR`)")
        for rid, records in runs:
            check_log(records, os.path.join(logs, f"{rid}.jsonl"))
        ui.debug(f"verifying {len(runs)} run(s) of this pod: {how}")
    launch = verify_launch(ui, home, comfyui_args, runs)
    catalogue = store_catalogue.load(target)[0] if quick else None
    digests = None if quick else open_cache(False)      # records what it reads (SHA-256 for older files)
    with ui.progress("verifying") as (_, on_bytes):
        res = verify_pod(runs, home, target, kept_records(target), quick, catalogue, on_bytes, launch, digests)
    if digests is not None:
        digests.save()
    if launch is not None:
        res["launch"] = launch.doc()
    if comfyui_url:
        res["comfyui"] = ask_comfyui(comfyui_url, runs, home, target, launch)
        res["not_listed_by_comfyui"] = res["comfyui"]["not_listed"]
        res["ok"] = res["ok"] and not res["not_listed_by_comfyui"] and not res["comfyui"]["stale"]
    if fmt == "json":
        out(report.dumps(res))
    else:
        for rid in res["runs"]:
            out(f"attach {rid}: the YAML only, no file placed\n" if rid in res.get("attaches", ()) else
                f"run {rid}: {res['per_run'][rid]} files checked\n")
        if launch is not None and launch.args:
            out(f"  names resolved as ComfyUI started with {report.show(launch.shell_args())} ({launch.origin})\n")
        if quick:
            out(f"  quick: sizes and mtimes compared with the log, no file read"
                + (f" ({len(res['size_only'])} by size alone: no mtime of theirs is logged)" if res["size_only"] else "")
                + "; run without --quick to re-hash\n")
        if res.get("moved"):
            out(f"  the target moved with its volume: paths logged under {res['moved']['from']} are read under "
                f"{res['moved']['to']}\n")
        for name in res["unset_variables"]:
            out(f"  unset: the YAML's base_path uses ${name}, which is not set here; ComfyUI started "
                f"without it finds none of these models (export {name}=...)\n")
        if res.get("names_checked"):
            out(f"  {res['names_checked']} model names checked: each loads the bytes the run recorded"
                + (f", but for {len(res['names_changed'])}" if res["names_changed"] else "") + "\n")
        if res.get("not_attached"):
            out(f"  ComfyUI does not search the store first for the names this pod's runs placed: "
                f"{report.show(res['not_attached'])}; run `comfy-migrate attach` ("
                + (f"--comfyui {shlex.quote(report.show(home))} " if home else "")
                + f"--target {shlex.quote(report.show(target))}), then (re)start ComfyUI\n")
        for kind in ("missing", "changed", "shadowed", "broken_link_backs", "dangling_links", "names_changed",
                     "not_listed_by_comfyui"):
            for p in res.get(kind, []):
                out(f"  {kind}: {report.show(p)}\n")
        if res.get("comfyui"):
            c = res["comfyui"]
            out(f"  ComfyUI at {comfyui_url}: {c['nodes']} node types; {c['checked'] - len(c['not_listed'])} of "
                f"{c['checked']} names listed" + (f" ({len(c['unchecked'])} not in any list of its: custom-node "
                                                   "folders, files it shows under no name)" if c["unchecked"] else "")
                + "\n")
            if c["stale"]:
                out(f"  ComfyUI was started before the YAML changed: restart it ({c['stale']})\n")
            elif c.get("note"):
                out(f"  note: {c['note']}\n")
        if res["orphaned"] and not res.get("not_attached"):
            out(f"  note: {len(res['orphaned'])} file(s) in the target this pod's YAML does not list (other pods' "
                f"folders, or leftovers), e.g. {report.show(res['orphaned'][0])}; --format json lists them\n")
        out("all good\n" if res["ok"] else "problems found\n")
    if not res["ok"]:
        sys.exit(ExitCode.VERIFY_FAILED)


def verify_launch(ui: Ui, home, given, runs):
    """How the pod's ComfyUI is started, for verify: --comfyui-args, else the running ComfyUI's
    options, else those the newest run logged (it planned with them), else none."""
    from migrate.disk.launch import launch_of
    from migrate.disk.running import find_running
    if home is None or given is not None or find_running(home):
        return shell.resolve_launch(home, given, ui)
    head = runs[-1][1][0]
    logged = head.get("comfyui") if isinstance(head.get("comfyui"), dict) else {}
    args = logged.get("args")
    if isinstance(args, list) and args and all(isinstance(a, str) for a in args):
        try:
            return launch_of(home, args, f"as run {head.get('run')} logged them", lenient=True)
        except MigrateError as exc:
            ui.warn(f"the options run {head.get('run')} logged for ComfyUI no longer apply ({exc}): verified without them")
    return shell.resolve_launch(home, None, ui)


def ask_comfyui(url: str, runs, home, target: str, launch=None) -> dict:
    """verify --comfyui-url: does the running ComfyUI list every name the runs took out of the
    sources, and does it look started before the YAML changed?"""
    from urllib.parse import urlsplit

    from migrate.app.rollback import kept_records
    from migrate.disk.running import find_running
    from migrate.app.verify import check_listed, claims, read_server, resolution, stale_server, start_note
    try:
        view = read_server(url)
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read {url.rstrip('/')}/object_info: {exc}",
                       "is ComfyUI running at that URL (its own port, not a proxy's page)?")
    names = sorted(claims(runs, kept_records(target)))
    yaml_path = runs[-1][1][0].get("yaml")
    order = resolution(yaml_path, home, launch)[0] if yaml_path and os.path.exists(yaml_path) else {}
    from migrate.disk.facts import loaded_models
    disk: dict = {}
    for cat, name in loaded_models(order):      # what the pod's ComfyUI lists: finds its loaders by their choices
        disk.setdefault(cat, []).append(name)
    listed = check_listed(names, view, disk)
    started = changed = None
    if home and yaml_path and os.path.exists(yaml_path):
        try:
            port = urlsplit(url).port
        except ValueError:
            port = None
        procs = [p for p in find_running(home) if port is None or p.port == port]
        started = max((p.started for p in procs if p.started is not None), default=None)
        changed = os.stat(yaml_path).st_ctime
    stale = stale_server(names, view, order, target, listed, started, changed)
    note = None if stale else start_note(view, started, changed)
    return dict(listed, url=url, nodes=view.nodes, stale=stale, note=note)


# --- workflows -----------------------------------------------------------------------------------

def workflow_report(home: str, yaml_path, price: float, changes=None, launch=None, loaded=None) -> dict:
    """The workflows document (workflows.workflow_doc) of a ComfyUI folder, as its YAML resolves now
    (launch: how ComfyUI is started; its user folder holds the workflows; loaded: a dict given gets
    (category, name) -> (path, size) of every model ComfyUI loads now)."""
    from migrate.core import comfy, workflows
    from migrate.disk.facts import gather_workflows, model_identities, read_yaml
    text = read_yaml(yaml_path) if yaml_path else None
    if launch is not None:
        from migrate.disk.launch import search_order
        as_read = os.path.join(os.path.realpath(os.path.dirname(yaml_path)), os.path.basename(yaml_path)) \
            if yaml_path else None
        order = search_order(launch, {p: read_yaml(p) for p in launch.yamls if p != as_read}, as_read, text,
                             models_real=False)
        found, before = gather_workflows(home, order, launch.user)
    else:
        order = comfy.search_folders([(yaml_path, text)] if text is not None else [], os.path.join(home, "models"))
        found, before = gather_workflows(home, order)
    sizes = {k: v[1] for k, v in before.items()}
    if loaded is not None:
        loaded.update(before)
    return workflows.workflow_doc(found, before, changes or {}, sizes, price, model_identities(before))


def workflows_check(home: str, launch, path: str, fmt: str) -> None:
    """`workflows --check FILE`: each model of a manifest made on another pod, as this pod has it."""
    from migrate.core import workflows
    from migrate.disk.facts import DEFAULT_TARGET
    try:
        with open(path, "rb") as f:
            text = f.read(64 << 20).decode("utf-8")
        manifest = workflows.parse_manifest(text)
    except OSError as exc:
        raise BadInput(f"cannot read the manifest {path}: {exc.strerror}", "pass the file `workflows --manifest` wrote")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path} is not a workflows manifest: {str(exc)[:120]}",
                       "pass the file `comfy-migrate workflows --manifest FILE` wrote on the other pod")
    loaded: dict = {}
    workflow_report(home, os.path.join(home, "extra_model_paths.yaml"), 0.0, launch=launch, loaded=loaded)
    wanted = {(m["category"], m["name"]): m for w in manifest["workflows"] for m in w["models"]}
    here = {k: loaded[k][1] for k in wanted if k in loaded}
    sha = shell.model_sha256({k: loaded[k][0] for k, m in wanted.items()
                              if k in here and m.get("sha256") and m.get("size") == here[k]}, open_cache(False),
                             os.path.abspath(os.environ.get("COMFY_MIGRATE_TARGET") or DEFAULT_TARGET))
    rows = workflows.check_manifest(manifest, here, sha)
    if fmt == "json":
        out(report.dumps({"manifest": path, "workflows": rows}))
    else:
        for w in rows:
            out(f"{w['path']}:\n")
            for m in w["models"]:
                out(f"  {m['category'] or '?'}/{m['name']}: {workflows.VERDICTS[m['verdict']]}\n")
        counts = Counter(m["verdict"] for w in rows for m in w["models"])
        out(", ".join(f"{counts[v]} {v}" for v in workflows.VERDICTS) + "\n")
    if any(m["verdict"] != "same" for w in rows for m in w["models"]):
        sys.exit(ExitCode.PROBLEMS)


@cli.command("workflows", context_settings=CONTEXT)
@click.option("--comfyui", envvar="COMFYUI_DIR", callback=nonempty, help="The ComfyUI folder (its user/*/workflows/ are read).")
@price_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              envvar="COMFY_MIGRATE_FORMAT", show_default=True, help="Output format.")
@launch_option
@click.option("--manifest", "manifest", type=click.Path(dir_okay=False), default=None,
              help="Write FILE (JSON): per saved workflow, each model's category, name, size and SHA-256.")
@click.option("--check", "check", type=click.Path(dir_okay=False), default=None,
              help="Check a manifest made on another pod: per model, same bytes / other bytes / missing.")
def workflows_cmd(comfyui, price_per_gb_month, fmt, comfyui_args, manifest, check) -> None:
    """Which models the pod's saved workflows load, which they need and the pod lacks, and which no
    workflow uses (with their monthly cost on a network volume). Reads only; never changes a workflow.

    --manifest FILE writes what the workflows need, by SHA-256 (from the digest cache or the store's
    catalogue where they vouch for the file, else read once); --check FILE, on another pod, says per
    model whether it is present with the same bytes, present with other bytes, or missing.
    Exit code 1 when --check finds a model that is not the same; 3 when FILE is not a manifest.

    \b
    Example:
      comfy-migrate workflows --comfyui /workspace/runpod-slim/ComfyUI
      comfy-migrate workflows --manifest needs.json       (on pod A)
      comfy-migrate workflows --check needs.json          (on pod B)
    """
    from migrate.disk.facts import DEFAULT_TARGET, find_comfyui
    home = find_comfyui(comfyui)
    launch = shell.resolve_launch(home, comfyui_args)
    if manifest and check:
        raise click.UsageError("--manifest and --check: give one of them")
    if check:
        return workflows_check(home, launch, check, fmt)
    loaded: dict = {}
    doc = workflow_report(home, os.path.join(home, "extra_model_paths.yaml"), price_per_gb_month, launch=launch,
                          loaded=loaded)
    if manifest:
        from migrate.core import workflows
        keys = {(m["category"], m["name"]) for w in doc["workflows"] for m in w["models"]}
        sha = shell.model_sha256({k: loaded[k][0] for k in keys if k in loaded}, open_cache(False),
                                 os.path.abspath(os.environ.get("COMFY_MIGRATE_TARGET") or DEFAULT_TARGET))
        made = workflows.manifest_doc(doc, sha)
        for w in made["workflows"]:
            w["path"] = os.path.relpath(w["path"], getattr(launch, "user", None) or os.path.join(home, "user"))
        try:
            with open(manifest, "w", encoding="utf-8") as f:
                f.write(report.dumps(made))
        except OSError as exc:
            raise BadInput(f"cannot write the manifest {manifest}: {exc.strerror}", "choose another --manifest path")
        n = sum(len(w["models"]) for w in made["workflows"])
        out(f"manifest of {len(made['workflows'])} workflow(s), {n} model(s) written to {manifest}\n")
        return
    if fmt == "json":
        out(report.dumps(doc))
    else:
        out("\n".join(report.workflow_lines(doc, launch.user)) + "\n")


# --- audit ---------------------------------------------------------------------------------------

@cli.command("audit", context_settings=CONTEXT)
@click.option("--comfyui", envvar="COMFYUI_DIR", callback=nonempty,
              help="Check this ComfyUI's models folder (and use its extra_model_paths.yaml for the search order).")
@target_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              envvar="COMFY_MIGRATE_FORMAT", show_default=True, help="Output format.")
@click.option("--no-cache", is_flag=True, help="Read every model file's ends again, ignoring cached verdicts.")
@launch_option
@click.pass_obj
def audit_cmd(ui: Ui, comfyui, target, fmt, no_cache, comfyui_args) -> None:
    """Check model files without changing anything: truncated or damaged safetensors, git-LFS
    pointers and HTML pages saved as models, empty files, unfinished downloads, names another file
    shadows, extensions ComfyUI does not list, dangling symlinks.

    Checks the ComfyUI models folder and the store (each given, or found by default).
    Exit code 1 when a file is broken or suspect.

    \b
    Example:
      comfy-migrate audit --comfyui /workspace/runpod-slim/ComfyUI --target /workspace/models
      comfy-migrate audit --target /workspace/models --format json
    """
    from migrate.core import comfy
    from migrate.disk.facts import DEFAULT_TARGET, check_dir, find_comfyui, read_yaml
    from migrate.disk.sniff import audit_trees
    home = None
    if comfyui or not target:
        try:
            home = find_comfyui(comfyui)
        except MigrateError:
            if comfyui:
                raise
    shell.adopt_comfyui(home, ui)
    launch = shell.resolve_launch(home, comfyui_args, ui)
    roots = [check_dir(launch.models, "models folder")] if launch else []
    if target or os.path.isdir(DEFAULT_TARGET):
        roots.append(check_dir(resolve_target(target), "target"))
    if not roots:
        raise BadInput("nothing to audit: no ComfyUI folder and no store found", "pass --comfyui DIR or --target DIR")
    order = {}
    if home:
        yaml_path = os.path.join(home, "extra_model_paths.yaml")
        text = read_yaml(yaml_path)
        order = comfy.search_folders([(yaml_path, text)] if text is not None else [], os.path.join(home, "models"))
        if launch is not None:
            from migrate.disk.launch import search_order
            order = search_order(launch, {p: read_yaml(p) for p in launch.yamls}, models_real=False)
    res = audit_trees(roots, order, open_verdicts(no_cache), open_cache(no_cache))
    ui.debug(f"{res.files} entries, {res.read} files read, the rest from the cache")
    if fmt == "json":
        doc = report.audit_doc(res.roots, res.findings, dict(res.summaries), res.files)
        doc["verified_upstream"] = list(res.verified)
        out(report.dumps(doc))
    else:
        room = (report.WIDTH - 30) // max(1, len(res.roots))     # the roots share what the words leave (-v: whole)
        out(f"audit of {', '.join(report.show(r) if ui.verbosity > 0 else report.middle(r, room) for r in res.roots)}: "
            f"{res.files} entries\n")
        if res.findings:
            out(table(report.audit_rows(res.findings), report.AUDIT_HEADERS, names=(2,)) + "\n\n")
            fixes = sorted({(f.kind, f.fix) for f in res.findings if f.fix})
            for kind, fix in fixes:
                out(f"{kind}: {fix}\n")
        counts = {s: sum(1 for f in res.findings if f.severity == s) for s in ("broken", "suspect", "notice")}
        out(", ".join(f"{n} {s}" for s, n in counts.items()) + "\n")
        if res.verified:
            out(f"{len(res.verified)} model(s) verified upstream: the SHA-256 their sidecar names matches their bytes\n")
            for p in res.verified:
                ui.debug(f"  verified upstream: {report.show(p)}")
    if any(f.blocks for f in res.findings):
        sys.exit(ExitCode.PROBLEMS)


_accept_verbosity_after_the_command()      # after every command above is defined
