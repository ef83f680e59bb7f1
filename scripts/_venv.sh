# Sourced by the scripts: make sure .venv/ exists and holds the package with its test extras.
# Re-installs only when setup.cfg or pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "comfy-migrate: creating $VENV" >&2
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.installed"
want="$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "comfy-migrate: installing the package and its test extras into .venv/" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test]" >&2
    echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
