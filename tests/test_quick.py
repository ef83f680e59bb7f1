"""`comfy-migrate scan` starts without click (migrate/quick.py): the command lines it reads itself
get exactly click's parameters, everything else still reaches click, and both starts print the
same thing."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

import click
import pytest
from hypothesis import example, given, settings, strategies as st

from conftest import run_cli
from migrate.cli import cli
from migrate.quick import ENVVARS, parse_scan

TOKENS = ["-q", "-v", "--quiet", "--verbose", "-qv", "-vv", "scan", "plan", "--source", "--comfyui", "--format",
          "--no-cache", "--duplicates", "--source=a", "--source=a=b", "--comfyui=c", "--format=json",
          "--format=table", "--format=xml", "--format=", "--source=", "--no-cache=1", "--duplicates=",
          "json", "table", "JSON", "d", "e f", "-", "--", "-h", "--help", "--sorce", "--version", "",
          "--target", "-x"]
ENV_VALUES = [None, "", " ", "json", "table", "xml", "a", "a b", " a\tb "]


@contextlib.contextmanager
def environ(values):
    saved = {var: os.environ.get(var) for var in values}
    try:
        for var, value in values.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def click_parse(argv):
    """(verbosity, scan parameters) as click parses argv, or None when it is not a scan or an error."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ctx = cli.make_context("comfy-migrate", list(argv))
            name, cmd, rest = cli.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
            if name != "scan":
                return None
            sub = cmd.make_context(name, rest, parent=ctx)
    except (click.exceptions.ClickException, click.exceptions.Exit):
        return None
    return ctx.params["verbose"] - ctx.params["quiet"], sub.params


VERBOSITY = st.lists(st.sampled_from(["-q", "-v", "--quiet", "--verbose", "-qv"]), max_size=3)
PLAIN = ["--source", "--comfyui", "--format", "--no-cache", "--duplicates", "--source=a", "--format=json",
         "--format=table", "--comfyui=c", "d", "e f", "json", "table"]
# Mostly scan command lines quick.py may read (else the property would rarely be tried), some noise.
ARGV = st.builds(lambda pre, cmd, rest: pre + cmd + rest, VERBOSITY,
                 st.one_of(st.just(["scan"]), st.lists(st.sampled_from(TOKENS), max_size=1)),
                 st.lists(st.one_of(st.sampled_from(PLAIN), st.sampled_from(TOKENS)), max_size=8))


NO_ENV = {var: None for var in ENVVARS.values()}


@settings(max_examples=800, deadline=None)
@example(argv=["scan", "--format", "json", "--format=table", "--comfyui=a", "--comfyui", "b"], env=NO_ENV)
@example(argv=["scan", "--source=a", "--source", "b"], env=dict(NO_ENV, COMFY_MIGRATE_SOURCE="c d"))
@example(argv=["-q", "scan"], env=dict(NO_ENV, COMFY_MIGRATE_SOURCE=" a\tb ", COMFY_MIGRATE_FORMAT="json"))
@given(argv=ARGV,
       env=st.fixed_dictionaries({var: st.sampled_from(ENV_VALUES) for var in ENVVARS.values()}))
def test_every_command_line_read_without_click_gets_clicks_parameters(argv, env):
    ours = parse_scan(argv, {k: v for k, v in env.items() if v is not None})
    if ours is None:
        return
    with environ(env):
        theirs = click_parse(argv)
    assert theirs is not None, f"{argv} {env}: click refuses what quick.py accepted as {ours}"
    assert ours == theirs, argv


@pytest.mark.parametrize("argv", [
    ["scan"],
    ["scan", "--no-cache", "--format", "json", "--source", "/m"],
    ["-q", "scan", "--source", "/a", "--source=/b", "--duplicates", "--no-cache"],
    ["-v", "--verbose", "scan", "--comfyui", "/ComfyUI", "--format=table"],
])
def test_the_usual_scan_command_lines_start_without_click(argv):
    with environ({var: None for var in ENVVARS.values()}):
        theirs = click_parse(argv)
    assert theirs is not None and parse_scan(argv, {}) == theirs


@pytest.mark.parametrize("argv", [["scan", "-h"], ["scan", "--help"], ["--version"], ["-qq", "scan"],
                                  ["scan", "--format", "xml"], ["scan", "--sorce", "x"], ["scan", "x"],
                                  ["plan"], ["scan", "--source"], ["scan", "--source", "--no-cache"]])
def test_help_errors_and_other_commands_are_left_to_click(argv):
    assert parse_scan(argv, {}) is None


def test_scan_does_not_import_click(pod, cli_env):
    code = ("import sys\nfrom migrate.quick import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "sys.stderr.write('CLICK:%s' % ('click' in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code, "scan", "--no-cache", "--format", "json", "--comfyui",
                           str(pod.comfyui)], env=cli_env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.rsplit("CLICK:", 1)[1] == "False"


@pytest.mark.parametrize("args, code", [
    (["scan", "--format", "json"], 0),
    (["-v", "scan"], 0),
    (["scan", "--duplicates", "--format", "json"], 0),
    (["scan", "--duplicates"], 0),
    (["scan", "--source", "/nonexistent-folder"], 3),
])
def test_both_starts_print_the_same(pod, cli_env, args, code):
    env = dict(cli_env, COMFYUI_DIR=str(pod.comfyui))
    quick = run_cli(args, dict(env, COMFY_MIGRATE_CACHE=env["COMFY_MIGRATE_CACHE"] + ".quick"), check=code)
    via_click = subprocess.run([sys.executable, "-c", "from migrate.cli import main; main()", *args], env=env,
                               cwd=env["HOME"], capture_output=True, encoding="utf-8", errors="surrogateescape")
    assert (via_click.returncode, via_click.stdout, via_click.stderr) == (code, quick.stdout, quick.stderr)
