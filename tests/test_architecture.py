"""The design's one-way arrows and the README's promises, checked."""
import ast
import os
import pickle
import re
import subprocess
import sys

import pytest

import migrate.cli as cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "migrate")
# The layers (docs/architecture.md), each a folder; an arrow may only point down. The shell on top
# (cli.py, the only importer of click; shell.py, its click-free half, which imports tqdm and
# tabulate inside the functions that draw) may import any layer.
MAY_IMPORT = {"core": {"core"}, "disk": {"core", "disk"}, "app": {"core", "disk", "app"}, "views": {"core", "views"}}
SHELL = {"cli", "shell", "__main__", "__init__"}
# Every module of every layer: listed from the folders, so a new module is covered the day it is added.
LAYERED = sorted((layer, n[:-3]) for layer in MAY_IMPORT for n in os.listdir(os.path.join(PKG, layer))
                 if n.endswith(".py") and n != "__init__.py")
CORE = [f"{layer}.{name}" for layer, name in LAYERED]     # every module but the shell


def source(dotted: str) -> str:
    return open(os.path.join(PKG, *dotted.split(".")) + ".py").read()


def test_core_never_loads_the_shell_libraries():
    code = ("import sys\n" + "".join(f"import migrate.{m}\n" for m in CORE) +
            "bad = [m for m in ('click', 'tqdm', 'tabulate') if m in sys.modules]\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "", f"core modules import {out.strip()}"


def test_the_core_names_the_shell_libraries_nowhere():
    """Not even inside a function: the core hands callbacks to the shell instead (style.md)."""
    assert len(CORE) >= 30 and {"disk.identity", "core.names", "core.preflight", "disk.running", "core.workflows",
                                "views.html_report"} <= set(CORE)
    for name in CORE:
        src = source(name)
        bad = re.findall(r"^\s*(?:from|import) (click|tqdm|tabulate)\b", src, re.M)
        assert not bad, f"migrate/{name}.py imports {bad}"
        assert not re.search(r"^\s*(?:from migrate(?:\.| import )(?:cli|shell)\b)", src, re.M), \
            f"migrate/{name}.py imports the shell"


def test_only_the_shell_lives_beside_the_layers():
    """A new module picks its layer: the package's top holds the shell and the layer folders only."""
    top = {n[:-3] for n in os.listdir(PKG) if n.endswith(".py")}
    assert top == SHELL
    assert {n for n in os.listdir(PKG) if os.path.isdir(os.path.join(PKG, n)) and n != "__pycache__"} == set(MAY_IMPORT)


def imports_of(dotted: str) -> list:
    """(line, layer) of every import of ours in a module, inside functions too."""
    found = []
    for node in ast.walk(ast.parse(source(dotted))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "migrate":
                names = [f"migrate.{a.name}" for a in node.names]
            elif node.module.startswith("migrate."):
                names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("migrate.")]
        for n in names:
            parts = n.split(".")
            if parts[1] != "__version__":
                found.append((node.lineno, parts[1]))
    return found


def test_arrows_point_down_only():
    """core imports core; disk core and disk; app core, disk and app; views core and views. Measured
    when the folders were made: every arrow already pointed down but three (sniff used verify's
    name rule, execute report's byte format, facts execute's run-log query): those moved down."""
    bad = []
    for layer, name in LAYERED:
        for line, to in imports_of(f"{layer}.{name}"):
            if to not in MAY_IMPORT[layer]:
                bad.append(f"migrate/{layer}/{name}.py:{line} imports migrate.{to}")
    assert not bad, "\n".join(bad)


def test_model_and_errors_import_nothing_of_ours():
    for name in ("core.model", "core.errors"):
        assert not re.search(r"^\s*(from|import) migrate", source(name), re.M), name


def docs() -> str:
    """The README (the short guide) and docs/reference.md (every command)."""
    return "".join(open(os.path.join(ROOT, p)).read() for p in ("README.md", os.path.join("docs", "reference.md")))


def test_every_command_is_documented_in_the_reference():
    reference = open(os.path.join(ROOT, "docs", "reference.md")).read()
    for name in cli.cli.commands:
        assert f"### {name}" in reference, f"command {name} missing from docs/reference.md"
        assert f"comfy-migrate {name}" in reference


def test_the_readme_is_short_and_its_links_exist():
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert len(readme.splitlines()) <= 150
    for target in re.findall(r"\]\(([^)#]+)", readme):
        assert os.path.exists(os.path.join(ROOT, target)), target


def test_every_readme_option_exists():
    readme = docs()
    known = set()
    for cmd in [cli.cli, *cli.cli.commands.values()]:     # the group's own (global) options too
        for p in cmd.params:
            known.update(o for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", []))
    known.update({"--help", "--version", "--link-back/--no-link-back", "--extra-model-paths-config"})
    known.update({"--base-directory", "--models-directory", "--output-directory"})      # ComfyUI's own
    known.update({"--fast", "--durations"})    # scripts/test, pytest
    known.update({"--trials", "--seed", "--only", "--size", "--files", "--runs", "--quick", "--stride",
                  "--moosefs-mib"})   # scripts/torture, bench
    known.add("--remove-source-files")     # rsync's, in the bench table
    known.update({"--cache", "--python", "--record", "--keep", "--comfyui-version", "--launch"})    # scripts/real-comfyui
    known.update({"--listen", "--port", "--attach-files", "--only-attach", "--only-hashes"})   # ComfyUI's main.py (start.sh), bench
    for opt in set(re.findall(r"(?<![\w-])--[a-z][a-z-]*(?:/--[a-z-]+)?", readme)):
        assert opt in known, f"README mentions {opt}, which no command has"


def test_quick_start_scripts_exist_and_are_executable():
    for s in ("scripts/demo", "scripts/test", ".ci/run"):
        assert os.access(os.path.join(ROOT, s), os.X_OK), s


@pytest.mark.parametrize("extra", [[], ["--duplicates"]])
def test_scan_loads_no_library_it_does_not_use(tmp_path, extra):
    """Start-up is part of every command's time: `scan` must not import what only other commands
    need (YAML, SQLite without a cache, ctypes, difflib, tables for JSON output, progress bars off a
    TTY, the trash, subprocesses, sockets). Commands import those inside their own bodies."""
    (tmp_path / "models" / "loras").mkdir(parents=True)
    (tmp_path / "models" / "loras" / "a.safetensors").write_bytes(b"x")
    (tmp_path / "models" / "loras" / "b.safetensors").write_bytes(b"x")    # a duplicate for --duplicates
    code = ("import sys\nfrom migrate.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = ('yaml', 'sqlite3', 'ctypes', 'difflib', 'tabulate', 'tqdm', 'send2trash', 'subprocess',"
            " 'socket', 'dataclasses')\n"
            "sys.stderr.write('LOADED:' + ','.join(m for m in heavy if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code, "scan", "--no-cache", "--source", str(tmp_path / "models"),
                           "--format", "json", *extra], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.rsplit("LOADED:", 1)[1] == ""


def test_a_scan_printing_its_table_loads_no_package_metadata(tmp_path):
    """The table costs tabulate's import and nothing more: tabulate 0.10 imports importlib.metadata
    (and with it the email package) at import time to learn its own version, ~25 ms of every
    command that prints a table (setup.cfg keeps it below 0.10)."""
    (tmp_path / "models" / "loras").mkdir(parents=True)
    (tmp_path / "models" / "loras" / "a.safetensors").write_bytes(b"x")
    code = ("import sys\nfrom migrate.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = ('importlib.metadata', 'email', 'zipfile')\n"
            "sys.stderr.write('TABLE:' + str('tabulate' in sys.modules) + ' LOADED:' +"
            " ','.join(m for m in heavy if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code, "scan", "--no-cache", "--source", str(tmp_path / "models")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.rsplit("TABLE:", 1)[1] == "True LOADED:"


def test_records_are_immutable_tuples_without_a_dict_that_name_their_fields():
    """Once per file (FileRecord, Action): no per-instance dict. repr names the fields (pytest shows it)."""
    from migrate.disk import dupes
    from migrate.core import model
    classes = [v for mod in (model, dupes) for v in vars(mod).values()
               if isinstance(v, type) and issubclass(v, tuple) and v.__module__ == mod.__name__]
    assert len(classes) == 15
    for cls in classes:
        value = cls(*range(len(cls._fields)))
        assert not hasattr(value, "__dict__") and repr(value).startswith(f"{cls.__name__}({cls._fields[0]}=0"), cls
        assert pickle.loads(pickle.dumps(value)) == value and hash(value) == hash(cls(*value)), cls
        with pytest.raises(AttributeError):
            setattr(value, cls._fields[0], 1)


# --- fsops is the one module that changes the disk ---------------------------------------------------
# Calls that change a file or a folder, found by ast: os's, shutil's, sqlite3.connect (creates its file),
# open/os.open with a mode or flags that write, send2trash, libc's renameat2, pathlib's writing methods.
OS_CHANGES = {"rename", "replace", "renames", "link", "symlink", "unlink", "remove", "removedirs", "rmdir",
              "mkdir", "makedirs", "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "utime", "truncate",
              "ftruncate", "write", "writev", "pwrite", "pwritev", "mkfifo", "mknod", "posix_fallocate",
              "copy_file_range", "sendfile"}
WRITE_FLAGS = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND"}
PATH_CHANGES = {"write_text", "write_bytes", "unlink", "mkdir", "rmdir", "touch", "symlink_to", "hardlink_to"}
# The only changes allowed outside fsops: each module's writes of its own state file, by function.
OWN_STATE_FILES = {
    ("journal", "Journal.create"),       # the run's log (runs/<id>.jsonl): created O_EXCL, its folder made
    ("journal", "Journal.reopen"),       # a continued run's log, its torn last line cut off
    ("journal", "Journal.append"),       # one record appended (and the test hook's torn half-line)
    ("lock", "create_excl"),             # the target's lock file (and lock.break), created O_EXCL, written once
    ("lock", "TargetLock._store_now"),   # a scratch file whose mtime is the store's clock, removed again
    ("lock", "TargetLock.acquire"),      # ... the state folder made for the lock
    ("lock", "TargetLock._break"),       # a stale lock taken away
    ("lock", "TargetLock._beat"),        # the lease's mtime renewed
    ("lock", "TargetLock.release"),      # the lock removed
    ("lock", "_drop_dead_break"),        # a killed breaker's lock.break removed
    ("hashing", "DigestCache._discard"),  # the user's digest cache (~/.cache), set aside when damaged
    ("hashing", "save_rows"),            # ... written
    ("hashing", "load_rows"),            # ... read (sqlite3.connect creates a missing file)
}


def _names_in(node) -> set:
    return {n.attr if isinstance(n, ast.Attribute) else n.id for n in ast.walk(node)
            if isinstance(n, (ast.Attribute, ast.Name))}


def disk_changes(path: str) -> list:
    """(line, call, enclosing function's qualified name) of each disk-changing call in one module."""
    tree = ast.parse(open(path).read())
    consts = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
              for t in node.targets if isinstance(t, ast.Name)}
    out = []

    def visit(node, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, f"{where}.{child.name}" if where else child.name)
                continue
            if isinstance(child, ast.Call):
                what = _change(child, consts)
                if what:
                    out.append((child.lineno, what, where))
            visit(child, where)
    visit(tree, "")
    return out


def _change(call: ast.Call, consts: dict):
    f = call.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
        mod, name = f.value.id, f.attr
        if mod == "os" and name in OS_CHANGES:
            return f"os.{name}"
        if mod == "os" and name == "open":
            flags = call.args[1:2] + [k.value for k in call.keywords if k.arg == "flags"]
            found = set().union(*(_names_in(x) for x in flags)) if flags else set()
            for n in list(found):
                if n in consts:
                    found |= _names_in(consts[n])
            local = any(isinstance(x, ast.Name) and x.id not in consts and not x.id.isupper() for x in flags)
            if found & WRITE_FLAGS or local:        # (flags in a local variable count as writing; an
                return "os.open (writing)"          # imported constant, hashing.OPEN_FLAGS, reads)
        if mod == "shutil" or (mod == "sqlite3" and name == "connect"):
            return f"{mod}.{name}"
        if mod == "tempfile" and name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryDirectory"):
            return f"tempfile.{name}"
    if isinstance(f, ast.Name):
        mode = call.args[1:2] + [k.value for k in call.keywords if k.arg == "mode"]
        if f.id in ("open", "fdopen") and mode and not (isinstance(mode[0], ast.Constant) and
                                                       not set(str(mode[0].value)) & set("wax+")):
            return "open (writing)"
        if f.id == "send2trash" or (f.id.endswith("renameat2") and f.id != "_renameat2"):
            return f.id
    if isinstance(f, ast.Attribute) and f.attr in PATH_CHANGES and not (
            isinstance(f.value, ast.Name) and f.value.id == "os"):
        return f".{f.attr}"
    return None


def _modules() -> dict:
    """Every module of the package by its short name, wherever it lives (migrate/ or a layer folder)."""
    out = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "migrate")):
        for n in files:
            if n.endswith(".py"):
                out[n[:-3] if n != "__init__.py" else os.path.relpath(folder, ROOT)] = os.path.join(folder, n)
    return out


def test_only_fsops_changes_the_disk():
    """Every change to a model file, a folder of the pod or the store, or the YAML goes through a named
    function of fsops (issue 25: "fsops is true"); the journal, the lock and the digest cache write
    their own state files (OWN_STATE_FILES, by function). A new os.unlink in rollback fails here."""
    mods = _modules()
    assert "fsops" in mods and "rollback" in mods and "execute" in mods
    assert len(disk_changes(mods["fsops"])) > 20       # the scanner sees what fsops does
    bad = [f"{name}.py:{line} {what} in {where or 'the module'}" for name, path in sorted(mods.items())
           if name != "fsops" for line, what, where in disk_changes(path)
           if (name, where) not in OWN_STATE_FILES]
    assert not bad, "disk changes outside fsops:\n" + "\n".join(bad)
    used = {(name, where) for name, path in mods.items() for _, _, where in disk_changes(path)}
    assert not OWN_STATE_FILES - used, f"exceptions no longer needed: {sorted(OWN_STATE_FILES - used)}"


def test_purge_and_rollback_find_their_runs_through_one_function():
    """Which store and which run logs a purge or a rollback means is common.find_run_logs, for both: neither
    opens with its own copy of the lookup (they once did, nearly alike)."""
    for name in ("app.purge", "app.rollback_cmd"):
        calls = {n.func.id for n in ast.walk(ast.parse(source(name)))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "find_run_logs" in calls, name
        assert not calls & {"find_log", "pod_log", "require_store"}, name
