#!/usr/bin/env bash
# Kill a real run with SIGKILL right after its first epoch's checkpoint, resume it, and compare
# its final test metrics with an uninterrupted run of the same config (default: runs/mr_full).
set -euo pipefail
config=${1:-configs/mr_full.yaml}
reference=${2:-runs/mr_full}
out=runs/resume-check
ftune=${FTUNE:-.venv/bin/ftune}
[ -f "$reference/metrics.json" ] || $ftune train "$config" --output-dir "$reference" --quiet
rm -rf "$out"
$ftune train "$config" --output-dir "$out" --quiet &
pid=$!
until ls -d "$out"/checkpoints/step-* >/dev/null 2>&1; do sleep 1; done
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
echo "killed after $(ls -d "$out"/checkpoints/step-* | head -1)"
$ftune train "$config" --output-dir "$out" --resume --quiet
.venv/bin/python - "$reference" "$out" <<'PY'
import json, sys
a, b = (json.load(open(f"{d}/metrics.json"))["test"]["finetuned"] for d in sys.argv[1:])
for key in ("accuracy", "loss", "macro_f1"):
    print(f"{key}: uninterrupted {a[key]!r}  resumed {b[key]!r}  |diff| {abs(a[key] - b[key]):.3g}")
PY
