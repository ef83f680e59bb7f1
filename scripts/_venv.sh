# Sourced by the scripts: make sure .venv/ exists and holds the package with its test extras.
# Re-installs only when setup.cfg, pyproject.toml or this script changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "comfy-migrate: creating $VENV" >&2
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.installed"
want="$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" "$ROOT/scripts/_venv.sh" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "comfy-migrate: installing the package and its test extras into .venv/" >&2
    # compat: a plain path entry in a .pth file. The default editable mode installs an import hook
    # whose own imports (pathlib, urllib, ...) cost ~25 ms of every command's start-up here.
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --config-settings editable_mode=compat \
        -e "$ROOT[test]" >&2
    # setuptools (put here by venv's ensurepip) is not needed at run time (pip builds the package in
    # an isolated environment), and its distutils-precedence.pth import costs every start ~1-2 ms.
    "$VENV/bin/python" -m pip uninstall -q -y --disable-pip-version-check setuptools >&2 || true
    echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
