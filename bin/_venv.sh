# Sourced by bin/ scripts: make sure .venv exists with chatd and its test
# dependencies installed, refreshing it when pyproject.toml changes.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.chatd-installed"
want="$(cat "$root/pyproject.toml" | cksum)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "chatd: preparing $venv (first run only)..." >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[test]" >&2
    echo "$want" > "$stamp"
fi
