#!/usr/bin/env bash
# Dependencies for `make lock` and `make check-newest` (see the Makefile; uv resolves, pins and hashes).
#   lock          refresh requirements.lock to the newest versions pyproject.toml allows
#   check-newest  build .venv-newest from the newest allowed versions, say what changed against
#                 requirements.lock, and run the whole suite there; exits with the suite's code
set -euo pipefail
cd "$(dirname "$0")/.."
: "${UV:=.venv/bin/uv}" "${FIND_LINKS:=/opt/wheels}" "${WORKERS:=2}"

compile() {  # compile OUTPUT [extra uv flags]: every pin for Python 3.11 on Linux x86_64, torch's CPU build
    local out=$1; shift
    "$UV" pip compile pyproject.toml --extra test --upgrade --python-version 3.11 \
        --python-platform x86_64-manylinux_2_28 --find-links "$FIND_LINKS" --constraint constraints.txt \
        --custom-compile-command "make lock" --quiet --output-file "$out" "$@"
}

case "${1:-}" in
lock)
    compile requirements.lock --generate-hashes
    ;;
check-newest)
    venv=.venv-newest
    test -x "$venv/bin/python" || python3 -m venv "$venv"
    compile "$venv/newest.txt"
    "$UV" pip install --quiet --python "$venv/bin/python" --compile-bytecode --find-links "$FIND_LINKS" -r "$venv/newest.txt"
    "$UV" pip install --quiet --python "$venv/bin/python" --no-deps -e .
    echo "newest releases against requirements.lock:"
    python3 - requirements.lock "$venv/newest.txt" <<'PY'
import re, sys
def pins(path):
    return dict(re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)", open(path).read(), re.M))
locked, newest = pins(sys.argv[1]), pins(sys.argv[2])
changed = [f"  {name}: {locked.get(name, '(new)')} -> {version}"
           for name, version in sorted(newest.items()) if locked.get(name) != version]
changed += [f"  {name}: {version} -> (gone)" for name, version in sorted(locked.items()) if name not in newest]
print("\n".join(changed) if changed else "  nothing changed: the lock holds the newest releases")
PY
    HF_HUB_OFFLINE=1 "$venv/bin/python" -m pytest -n "$WORKERS"
    ;;
*)
    echo "usage: scripts/deps.sh lock|check-newest" >&2
    exit 2
    ;;
esac
