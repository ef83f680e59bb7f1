"""The command line in click: options, help texts, prompts and exit codes of every command.

The only importer of click, and the program's one entry point (`comfy-migrate`, `python -m migrate`).
The click-free pieces of the shell (messages, output, paths, the scan command's body) are in
shell.py. Start-up stays short by importing what a command needs inside that command.
"""
from __future__ import annotations

import os
import sys
from collections import Counter

import click

from migrate import __version__, shell
from migrate.disk import fsops
from migrate.views import report
from migrate.core.errors import BadInput, ExitCode, MigrateError, NotConfirmed
from migrate.core.model import Mode, OnConflict
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


def print_plan(plan, fmt: str, verbose: bool = False, quiet: bool = False) -> None:
    """The plan for people (or JSON). quiet (-q): no line per file, the totals and what needs a look."""
    from migrate.views.outcome import fit_lines
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
    from migrate.app.migrate import plan_pod
    fmt = kw.pop("fmt")
    req = plan_request(kw)
    _, plan = plan_pod(req, ui)
    print_plan(plan, fmt, ui.verbosity > 0, ui.verbosity < 0)
    if report_path is not None:
        write_report(ui, plan, kw, req.price, report_path)
    exit_if_unfit(plan)


def plan_request(kw: dict, **more):
    """The PlanRequest (or, with `more`, the MigrateRequest) of `plan`'s and `run`'s options."""
    from migrate.app.migrate import MigrateRequest, PlanRequest
    price = kw.pop("price_per_gb_month")
    return (MigrateRequest if more else PlanRequest)(price=price, **kw, **more)


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
    fsops.make_folders(reports)
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
    flows = workflow_report(home, plan.yaml_path, price, changes, plan.launch, target=plan.target) if home else None
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


class Asking:
    """The Io an application function talks through (app.common.Io): the Ui's messages and progress
    bars, `show` as this command shows what it is about to do, `confirm` on the terminal."""

    def __init__(self, ui: Ui, show=None) -> None:
        self.ui = ui
        self._show = show
        self.info, self.debug, self.warn, self.progress = ui.info, ui.debug, ui.warn, ui.progress

    @property
    def verbosity(self) -> int:
        return self.ui.verbosity

    def show(self, what) -> None:
        if self._show is not None:
            self._show(what)

    def confirm(self, question: str) -> None:
        confirm(question, False)


def emit(ui: Ui, said) -> None:
    """Print what a view says (views.outcome.Lines: (channel, text)), in order."""
    for channel, text in said:
        if channel == "out":
            out(text)
        elif channel in ("warn", "info", "debug"):
            getattr(ui, channel)(text)
        else:
            shell.err(text)


def wait_option(f):
    return click.option("--wait", type=click.FloatRange(min=0, max=7 * 86400), default=900, show_default=True,
                        metavar="SECONDS", callback=_a_number,
                        help="While another run holds the target's lock, wait this long (0: fail at once).")(f)


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
    import dataclasses

    from migrate.app.migrate import migrate
    from migrate.views import outcome
    fmt = kw.pop("fmt")
    if fmt == "json" and not yes and not dry_run:
        raise NotConfirmed("run --format json never asks (no summary would be seen before the question)",
                           "pass --yes, or look first with `comfy-migrate plan --format json`")
    req = plan_request(kw, dry_run=dry_run, yes=yes, while_running=while_running, wait=wait, argv=tuple(sys.argv))
    got = migrate(req, Asking(ui, lambda plan: show_summary(ui, plan, fmt)))
    if got.state == "dry_run":
        print_plan(got.plan, fmt, ui.verbosity > 0, ui.verbosity < 0)
        exit_if_unfit(got.plan)
    else:
        if got.state == "done":
            got = dataclasses.replace(got, page=run_page(ui, got, kw, req.price))
        emit(ui, outcome.lines(got, fmt, ui.verbosity, again=req.given(got.plan.target)))
    sys.exit(got.exit_code)


def run_page(ui: Ui, got, kw: dict, price: float):
    """The page of what ran, beside its log (the run is done: a failure here costs only the page)."""
    rep = got.report
    try:
        return write_report(ui, got.plan, kw, price, run_report_path(rep.log_path), made=f"run {rep.run_id}",
                            announce=False, done={"run": rep.run_id, "placed": rep.placed,
                                                  "copied_bytes": rep.copied_bytes, "removed": rep.removed,
                                                  "stayed": len(got.stayed), "quarantine_bytes": rep.quarantine_bytes})
    except (MigrateError, OSError) as exc:
        ui.warn(str(exc))
    except Exception as exc:         # noqa: BLE001 (the run has migrated: a bad page never hides its undo line)
        ui.warn(f"the run's report page was not written ({type(exc).__name__}); the run itself is done")
    return None


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
    from migrate.app.attach_cmd import AttachRequest, attach as attach_pod
    from migrate.views import outcome
    if fmt == "json" and not yes and not dry_run:
        raise NotConfirmed("attach --format json never asks", "pass --yes, or look first with --dry-run")
    req = AttachRequest(comfyui, target, base_path, dry_run, yes, wait, comfyui_args, tuple(sys.argv))
    got = attach_pod(req, Asking(ui, lambda shown: emit(ui, outcome.attach_preview(shown, ui.verbosity))
                                 if fmt == "table" else None))
    emit(ui, outcome.lines(got, fmt, ui.verbosity))
    sys.exit(got.exit_code)


# --- rollback, history, purge, verify --------------------------------------------------------------

def comfyui_option(f):
    return click.option("--comfyui", envvar="COMFYUI_DIR", callback=nonempty,
                        help="The ComfyUI folder: this pod's runs are those that wrote its "
                             "extra_model_paths.yaml. Default: as for `run`.")(f)


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
    from migrate.app.rollback_cmd import RollbackRequest, rollback as undo_run
    from migrate.views import outcome
    if fmt == "json" and not yes and not dry_run:
        raise NotConfirmed("rollback --format json never asks (no summary would be seen before the question)",
                           "pass --yes, or look first with `comfy-migrate rollback --dry-run --format json`")
    req = RollbackRequest(run_ref, target, comfyui, yaml_path, dry_run, yes, wait)
    got = undo_run(req, Asking(ui, lambda shown: emit(ui, outcome.rollback_preview(shown))))
    if got.state == "done":
        mark_page_rolled_back(ui, got.plan.log, got.report)
    emit(ui, outcome.lines(got, fmt, ui.verbosity))
    sys.exit(got.exit_code)


def mark_page_rolled_back(ui: Ui, log: str, rep) -> None:
    """The run's page beside its log (if it has one) says it was rolled back: a page that still
    read 'what it did' would tell a user the store holds what it no longer holds."""
    from migrate.disk import fsops
    from migrate.views import html_report
    path = os.path.join(os.path.dirname(os.path.dirname(log)), "reports",
                        os.path.basename(log)[:-len(".jsonl")] + ".html")
    try:
        with open(path, encoding="utf-8") as f:
            page = f.read()
        what = (f"{'partly: ' if rep.stranded else ''}{rep.undone} steps undone, {len(rep.skipped)} skipped, "
                f"{len(rep.stranded)} model file(s) not back"
                + ("" if rep.stranded or rep.skipped else "; nothing of it is left to purge"))
        fsops.atomic_write(path, html_report.rolled_back(page, rep.run_id, what).encode("utf-8"), 0o644)
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as exc:
        ui.warn(f"the run's page {report.show(path)} still reads as the run's result: "
                f"{fsops.describe(exc) if isinstance(exc, OSError) else 'not UTF-8'}")


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
    from migrate.app.common import require_store
    from migrate.disk.runlog import history
    rows = history(require_store(resolve_target(target)))
    if fmt == "json":
        out(report.dumps(rows))
    elif rows:
        out(table([[r["run"], r["time"], r["host"],
                    "attach (YAML only)" if r.get("kind") == "attach" else
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
    from migrate.app.common import require_store
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
    from migrate.app.purge import PurgeRequest, purge as free_quarantine
    from migrate.views import outcome

    got = free_quarantine(PurgeRequest(run_ref, target, comfyui, permanent, yes, wait),
                          Asking(ui, lambda shown: emit(ui, outcome.purge_preview(shown, fmt))))
    emit(ui, outcome.lines(got, fmt, ui.verbosity, run_ref=run_ref))
    sys.exit(got.exit_code)


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
    from migrate.app.verify_cmd import VerifyRequest, verify as verify_runs
    from migrate.views import outcome
    got = verify_runs(VerifyRequest(run_ref, comfyui, target, comfyui_url, quick, comfyui_args), Asking(ui))
    emit(ui, outcome.lines(got, fmt, ui.verbosity, url=comfyui_url, quick=quick))
    sys.exit(got.exit_code)


# --- workflows -----------------------------------------------------------------------------------

def workflow_report(home: str, yaml_path, price: float, changes=None, launch=None, loaded=None,
                    target: str | None = None) -> dict:
    """The workflows document (workflows.workflow_doc) of a ComfyUI folder, as its YAML resolves now
    (launch: how ComfyUI is started; its user folder holds the workflows; loaded: a dict given gets
    (category, name) -> (path, size) of every model ComfyUI loads now). Each model a saved workflow
    names carries its SHA-256 and AutoV2 where the digest cache or the store's catalogue (target) knows
    them already, else None: a report never reads a model to hash it."""
    from migrate.core import comfy, workflows
    from migrate.disk.facts import gather_workflows, model_identities, read_yaml
    text = read_yaml(yaml_path) if yaml_path else None
    if launch is not None:
        from migrate.disk.launch import search_order
        as_read = os.path.join(os.path.realpath(os.path.dirname(yaml_path)), os.path.basename(yaml_path)) \
            if yaml_path else None
        order = search_order(launch, {p: read_yaml(p) for p in launch.yamls if p != as_read}, as_read, text,
                             models_real=False)
        found, before, sources = gather_workflows(home, order, launch.user, launch)
    else:
        order = comfy.search_folders([(yaml_path, text)] if text is not None else [], os.path.join(home, "models"))
        found, before, sources = gather_workflows(home, order)
    sizes = {k: v[1] for k, v in before.items()}
    if loaded is not None:
        loaded.update(before)
    doc = workflows.workflow_doc(found, before, changes or {}, sizes, price, model_identities(before), sources)
    keys = {(m["category"], m["name"]) for w in doc["workflows"] for m in w["models"]}
    if target is None:
        from migrate.disk.facts import DEFAULT_TARGET
        target = os.path.abspath(os.environ.get("COMFY_MIGRATE_TARGET") or DEFAULT_TARGET)
    sha = shell.model_sha256({k: before[k][0] for k in sorted(keys, key=str) if k in before}, open_cache(False),
                             target, read=False)
    for w in doc["workflows"]:
        for m in w["models"]:
            known = sha.get((m["category"], m["name"]))
            m["sha256"], m["autov2"] = known, known[:10].upper() if known else None
    return doc


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
            fsops.write_file(manifest, report.dumps(made).encode("utf-8"))
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
