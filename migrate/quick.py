"""The program's entry point: `comfy-migrate scan` starts without click, everything else with it.

A short scan is mostly start-up: importing click (with inspect, typing, uuid, datetime, gettext)
costs ~45 ms here, about as long as hashing a 1 GiB file from the page cache, and `xxhsum` starts
in 2 ms. So this module reads the plain forms of a scan command line itself:

    comfy-migrate [-q|--quiet|-v|--verbose ...] scan [--source DIR ...] [--comfyui DIR]
                  [--format table|json] [--no-cache] [--duplicates]

each long option spelled out, its value as the next word or after `=`. Anything else (help,
--version, a short option cluster, a misspelled option, a value that starts with `-`, an empty
value, a variable set to the empty string) goes to click unchanged, so every help text and usage
error still comes from click. tests/test_quick.py checks, with hypothesis, that every command line
accepted here gets exactly the parameters click gives it, environment variables included.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

FLAGS = {"--no-cache": "no_cache", "--duplicates": "duplicates"}
VALUES = {"--source": "sources", "--comfyui": "comfyui", "--format": "fmt"}
ENVVARS = {"sources": "COMFY_MIGRATE_SOURCE", "comfyui": "COMFYUI_DIR", "fmt": "COMFY_MIGRATE_FORMAT"}
FORMATS = ("table", "json")
VERBOSITY = {"-q": -1, "--quiet": -1, "-v": 1, "--verbose": 1}

Params = dict[str, object]


def parse_scan(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[int, Params] | None:
    """(verbosity, the scan command's parameters) for argv, or None: leave argv to click."""
    verbosity, i = 0, 0
    while i < len(argv) and argv[i] in VERBOSITY:
        verbosity += VERBOSITY[argv[i]]
        i += 1
    if i >= len(argv) or argv[i] != "scan":
        return None
    values: dict[str, str] = {}
    sources = []
    params: Params = {"no_cache": False, "duplicates": False}
    rest = list(argv[i + 1:])
    while rest:
        name, eq, value = rest.pop(0).partition("=")
        if name in FLAGS and not eq:
            params[FLAGS[name]] = True
            continue
        if name not in VALUES:
            return None
        if not eq:
            if not rest:
                return None
            value = rest.pop(0)
        if not value or value.startswith("-"):
            return None
        if VALUES[name] == "sources":
            sources.append(value)
        else:
            values[VALUES[name]] = value            # the last one given counts, as in click
    for key, var in ENVVARS.items():
        if key in values or (key == "sources" and sources) or var not in environ:
            continue
        if not environ[var].strip():
            return None
        if key == "sources":
            sources = environ[var].split()          # click splits a repeatable option's variable
        else:
            values[key] = environ[var]
    fmt = values.get("fmt", "table")
    if fmt not in FORMATS:
        return None
    params.update(comfyui=values.get("comfyui"), sources=tuple(sources), fmt=fmt)
    return verbosity, params


def main() -> None:
    parsed = parse_scan(sys.argv[1:], os.environ)
    if parsed is None:
        from migrate.cli import main as click_main
        click_main()
        return
    from migrate import shell
    from migrate.errors import MigrateError
    verbosity, params = parsed
    try:
        shell.scan(shell.Ui(verbosity), **params)   # type: ignore[arg-type]
    except (MigrateError, KeyboardInterrupt, OSError) as exc:
        shell.fail(exc)
    sys.exit(0)
