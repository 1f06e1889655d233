#!/usr/bin/env bash
# Create or reuse the project's virtual environment in .venv and install eefetch into it.
# Sourced by scripts/demo and scripts/test; reinstalls only when pyproject.toml changes.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "eefetch needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "eefetch: creating a virtual environment in $venv" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.eefetch-installed"
want="$(cat "$repo/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "eefetch: installing eefetch and its dependencies into $venv" >&2
  log="$venv/install.log"
  if ! { "$venv/bin/python" -m pip install --disable-pip-version-check --upgrade pip &&
         "$venv/bin/python" -m pip install --disable-pip-version-check -e "$repo[test]"; } \
       > "$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "eefetch: installing failed; the whole log is in $log" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
