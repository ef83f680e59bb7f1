"""ComfyUI as it is launched: the folder of its main.py and its own options (issue 23).

ComfyUI's `main.py` (apply_custom_paths) and `folder_paths.py`, 0.3.75 and 0.33.0 alike, decide
where models are found from a handful of options:
- `--base-directory B`: base_path = abspath(B) (else the real folder of folder_paths.py); the
  models folder is base_path/models, the output folder base_path/output, the user folder base_path/user.
- `--models-directory D` (0.33 on): the models folder is abspath(D), which must exist.
- the YAML read is always `<real folder of main.py>/extra_model_paths.yaml` (if it is a file), never
  one in B; then each `--extra-model-paths-config X` in order (the option takes several files and may
  be repeated; a missing one stops ComfyUI); relative paths are taken from ComfyUI's working folder.
- then `<output>/{checkpoints,clip,vae,diffusion_models,loras}` are added as search folders (after
  the YAML's, never first); `--output-directory O` replaces <output> by abspath(O).
The options are parsed as ComfyUI parses them: with an argparse parser holding every option of the
installed ComfyUI's `comfy/cli_args.py` (read with `ast`, never imported), so abbreviations, `=`
forms, flags and several values per option read as ComfyUI reads them.
"""
from __future__ import annotations

import argparse
import ast
import os
import shlex
from collections import namedtuple
from typing import List, Optional, Sequence, Tuple

from migrate.core.errors import BadInput, ExitCode, MigrateError

# The options that place models, in the form they are passed back (a run's log, a printed hint).
PATH_OPTIONS = ("--base-directory", "--models-directory", "--output-directory", "--user-directory",
                "--extra-model-paths-config")
# main.py adds these search folders under the output folder after the YAMLs' (category as given there).
OUTPUT_FOLDERS = ("checkpoints", "clip", "vae", "diffusion_models", "loras")
ENV = "COMFY_MIGRATE_COMFYUI_ARGS"


class BadLaunch(MigrateError):
    """Options ComfyUI itself would refuse (unknown, or a missing value): a usage error."""

    exit_code = ExitCode.USAGE


class Launch(namedtuple("Launch", [
    "comfyui",          # str: the folder of main.py, as given (absolute)
    "args",             # tuple[str, ...]: the options that place models, paths absolute (PATH_OPTIONS)
    "origin",           # str: where the options come from ("" without any)
    "base",             # str: ComfyUI's base_path
    "models",           # str: ComfyUI's models folder
    "output",           # str: its output folder
    "user",             # str: its user folder (saved workflows)
    "configs",          # tuple[str, ...]: --extra-model-paths-config files, absolute, in load order
])):
    """Where a ComfyUI started with these options finds its models (see the module's docstring)."""

    __slots__ = ()

    @property
    def main_yaml(self) -> str:
        """The YAML ComfyUI always reads: next to the real main.py, whatever --base-directory says."""
        return os.path.join(os.path.realpath(self.comfyui), "extra_model_paths.yaml")

    @property
    def yamls(self) -> Tuple[str, ...]:
        """Every YAML it reads, in order (the first only while it is a file)."""
        return (self.main_yaml,) + tuple(self.configs)

    def output_folders(self) -> List[Tuple[str, str]]:
        return [(cat, os.path.join(self.output, cat)) for cat in OUTPUT_FOLDERS]

    def shell_args(self) -> str:
        return shlex.join(self.args)

    def describe(self) -> str:
        opts = self.shell_args() or "no options that place models"
        return f"ComfyUI {self.comfyui}: {opts}" + (f" ({self.origin})" if self.origin else "")

    def doc(self) -> dict:
        return {"comfyui": self.comfyui, "args": list(self.args), "from": self.origin, "models": self.models,
                "output": self.output, "yamls": list(self.yamls), "base": self.base, "user": self.user}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):       # argparse would print usage and exit 2
        raise BadLaunch(message)


def _literal(node: ast.AST):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _builtin_parser() -> _Parser:
    p = _Parser(add_help=False, allow_abbrev=True, conflict_handler="resolve")
    for opt in PATH_OPTIONS[:-1] + ("--input-directory", "--temp-directory"):
        p.add_argument(opt)
    p.add_argument("--extra-model-paths-config", nargs="+", action="append")
    return p


def parser_of(comfyui: str) -> Tuple[Optional[_Parser], str]:
    """(a parser with every option of <comfyui>/comfy/cli_args.py, or None when it cannot be read,
    and a line saying which). Types are not checked (every value is a string), choices neither."""
    path = os.path.join(comfyui, "comfy", "cli_args.py")
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError) as exc:
        return None, f"cannot read {path} ({getattr(exc, 'strerror', None) or type(exc).__name__})"
    p = _Parser(add_help=True, allow_abbrev=True, conflict_handler="resolve")
    n = 0
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"):
            continue
        opts = [_literal(a) for a in node.args]
        if not opts or not all(isinstance(o, str) and o.startswith("-") for o in opts):
            continue
        kw = {}
        for k in node.keywords:
            if k.arg == "nargs":
                kw["nargs"] = _literal(k.value)
            elif k.arg == "const":
                kw["const"] = _literal(k.value)
            elif k.arg == "action":
                action = _literal(k.value)      # a custom Action class (EnumAction, VerboseAction): a store
                if action in ("store_true", "store_false", "append", "store_const", "count", "append_const"):
                    kw["action"] = action
            elif k.arg == "dest":
                kw["dest"] = _literal(k.value)
        if kw.get("action") in ("store_true", "store_false", "count"):
            kw.pop("nargs", None)
            kw.pop("const", None)
        if kw.get("action") in ("store_const", "append_const") and "const" not in kw:
            kw["const"] = None
        if kw.get("nargs") is None:
            kw.pop("nargs", None)
        try:
            p.add_argument(*opts, **kw)
            n += 1
        except (ValueError, TypeError, argparse.ArgumentError):
            continue
    if not any(a.dest == "extra_model_paths_config" for a in p._actions):
        return None, f"{path} has no option list comfy-migrate can read"
    return p, f"{n} options from {path}"


def launch_of(comfyui: str, argv: Sequence[str], origin: str, cwd: Optional[str] = None,
              lenient: bool = False) -> Launch:
    """The Launch of the ComfyUI whose main.py is in `comfyui`, given its options `argv` (those after
    main.py). Relative paths are taken from `cwd` (ComfyUI's working folder; default: `comfyui`).
    lenient: options of a running server (its own parser took them): unknown ones are ignored.
    Raises BadLaunch (exit 2) for options the installed ComfyUI refuses, BadInput (exit 3) for a
    --models-directory or --extra-model-paths-config ComfyUI would not start with."""
    comfyui = os.path.abspath(comfyui)
    cwd = cwd or comfyui
    argv = list(argv)
    parser, _ = parser_of(comfyui) if argv else (None, "")
    strict = parser is not None and not lenient
    parser = parser or _builtin_parser()
    where = f"{origin}: " if origin else ""
    try:
        if strict:
            ns = parser.parse_args(argv)
        else:
            ns = parser.parse_known_args(argv)[0]
    except BadLaunch as exc:
        from migrate.core.comfy import read_version
        version = read_version(comfyui)
        raise BadLaunch(f"{where}ComfyUI {version or ''} in {comfyui} would refuse these options: {exc}".replace("  ", " "),
                        "pass the options ComfyUI is started with, e.g. --comfyui-args '--base-directory /workspace/data'")
    except SystemExit:       # -h/--help or a custom Action calling exit
        raise BadLaunch(f"{where}not options ComfyUI starts with: {shlex.join(argv)}",
                        "pass the options ComfyUI is started with")

    def absolute(p: str) -> str:
        return os.path.normpath(os.path.join(cwd, p))

    got = vars(ns)
    args: List[str] = []
    base = got.get("base_directory")
    base = absolute(base) if base else os.path.realpath(comfyui)
    if got.get("base_directory"):
        args += ["--base-directory", base]
    models = got.get("models_directory")
    if models:
        models = absolute(models)
        if not os.path.isdir(models):
            raise BadInput(f"{where}--models-directory {models} is not a folder: ComfyUI would not start",
                           "pass the models folder ComfyUI is started with")
        args += ["--models-directory", models]
    else:
        models = os.path.join(base, "models") if got.get("base_directory") else os.path.join(comfyui, "models")
    output = got.get("output_directory")
    output = absolute(output) if output else os.path.join(base, "output")
    if got.get("output_directory"):
        args += ["--output-directory", output]
    user = got.get("user_directory")
    user = absolute(user) if user else os.path.join(base, "user")
    if got.get("user_directory"):
        args += ["--user-directory", user]
    configs: List[str] = []
    for group in got.get("extra_model_paths_config") or []:
        for c in (group if isinstance(group, list) else [group]):
            c = absolute(c)
            if not os.path.isfile(c):
                raise BadInput(f"{where}--extra-model-paths-config {c} is not a file: ComfyUI would not start",
                               "pass the files ComfyUI is started with")
            configs.append(c)
    if configs:
        args += ["--extra-model-paths-config", *configs]
    return Launch(comfyui, tuple(args), origin, base, models, output, user, tuple(configs))


def split(text: str, origin: str) -> List[str]:
    """--comfyui-args' value split as a shell splits it."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise BadLaunch(f"{origin}: {exc} in {text!r}", "quote it as a shell would, e.g. --comfyui-args "
                        "'--base-directory \"/workspace/my data\"'")


def plain(comfyui: str) -> Launch:
    """A ComfyUI started without options that place models."""
    return launch_of(comfyui, (), "")


def yaml_texts(launch: Launch, texts: dict, written: Optional[str] = None,
               text: Optional[str] = None) -> List[Tuple[str, str]]:
    """(path, text) of every YAML the launch reads, in ComfyUI's order, from `texts` (path -> text,
    None or absent: no such file). `written`: a YAML as ComfyUI reads it whose text is `text`
    instead (the plan's before or after); one this launch does not read is taken as read last (as
    by one more --extra-model-paths-config: what --yaml claims)."""
    out: List[Tuple[str, str]] = []
    paths = list(launch.yamls)
    if written is not None and written not in paths:
        paths.append(written)
    for p in paths:
        t = text if p == written else texts.get(p)
        if t is not None:
            out.append((p, t))
    return out


def search_order(launch: Launch, texts: dict, written: Optional[str] = None, text: Optional[str] = None,
                 models_real: bool = True) -> dict:
    """ComfyUI's search order for this launch (comfy.search_folders over yaml_texts, its models
    folder, then the output folders main.py adds)."""
    from migrate.core import comfy
    models = os.path.realpath(launch.models) if models_real else launch.models
    return comfy.search_folders(yaml_texts(launch, texts, written, text), models, output=launch.output_folders())

