#!/usr/bin/env bash
# Build .device/ for bench/llm_speed.py on the GPU machine (no network; Python 3.12, torch, transformers 5.17, peft,
# accelerate, pandas, ... but no trl, datasets, pydantic, bitsandbytes): ../shared/gpu/bundle.sh --qlora, plus TRL and
# what it imports at module level (datasets, pyarrow, dill, multiprocess, xxhash, fsspec, huggingface-hub) and
# liger-kernel (TRL's fast path; pure Python, needs the device's triton), stripped of what is never imported and packed
# as ONE .device/trl-site.tar.xz that .device/env.sh unpacks once to /tmp/ftune-trl/site-packages (pyarrow alone
# unpacks to 150 MB). The folder must be named site-packages: dill (datasets' fingerprints) pickles a module by
# reference only when its path is under sys.prefix or holds "site-packages", else by value, and pickling pyarrow by
# value fails ("Can't pickle <class 'MonthDayNano'>") at the first Dataset.from_list.
#
#   bash bench/bundle_trl.sh            # here, from the project root: rebuilds .device/ (cp312 manylinux wheels)
#   # then the device tool's run, with carry [".device"] and timeout_s 600:
#   source .device/env.sh && python bench/llm_speed.py; cp bench/results/llm_speed.* $OUT/
#
#   bash bench/bundle_trl.sh --check [--smoke]
#       builds the same stripped tree for THIS machine's Python (PYVER, default the venv's, 3.11) in a temp dir (not
#       .device/), makes a throwaway venv (CHECK_VENV, default /tmp/trlcheck-venv) holding what the device has
#       (torch CPU, transformers 5.17, huggingface-hub 1.33, accelerate, peft, pandas, ...) but none of the packed
#       packages, and imports datasets and trl (SFTTrainer, SFTConfig, liger_kernel.transformers) in a clean process
#       with PYTHONPATH=<tree>; each packed module must come from the tree; then a Dataset through map(num_proc=2),
#       a parquet round trip and TRL's bfd packing. --smoke also runs
#       bench/llm_speed.py --quick (rows trl, trl_fast, ftune; qwen shape; no probes) on the CPU with that tree.
#
# Versions are pinned (TRL_WHEELS below): datasets 5.2.0 needs huggingface-hub>=1.31 and transformers 5.17 takes
# huggingface-hub>=1.5,<2; the device was seen with hub 1.33.0, which is packed too (same version: harmless if present).
# PYVER (default 3.12) sets the Python of the archive's wheels only; bundle.sh's own wheels are always cp312.
set -euo pipefail
[ -f pyproject.toml ] || cd "$(git rev-parse --show-toplevel)"   # the project root
PY=${PY:-.venv/bin/python}; [ -x "$PY" ] || PY=python3
TRL_WHEELS=${TRL_WHEELS:-"trl==1.16.0 datasets==5.2.0 pyarrow==25.0.1 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0
  fsspec==2026.9.0 huggingface-hub==1.33.0 liger-kernel==0.8.5"}
mode=build; smoke=0
while [ $# -gt 0 ]; do case "$1" in
  --check) mode=check;; --smoke) smoke=1;;
  -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0;;
  *) echo "unknown option $1" >&2; exit 2;; esac; shift; done
if [ $mode = build ]; then PYVER=${PYVER:-3.12}; else PYVER=${PYVER:-$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}; fi

# fetch_tree DIR: the pinned wheels for PYVER (manylinux x86_64, no deps), unpacked into DIR and stripped
fetch_tree() {
  local dir=$1 wheels; wheels=$(mktemp -d)
  # shellcheck disable=SC2086
  for spec in $TRL_WHEELS; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d "$wheels" "$spec" 2>&1 | grep -v "^WARNING: Location" >&2 || true
    ls "$wheels" | grep -qi "^$(echo "${spec%%=*}" | tr - _)-" || { echo "error: no wheel for $spec (cp${PYVER/./})" >&2; exit 1; }
  done
  echo "wheels (cp${PYVER/./}):" >&2; for w in "$wheels"/*.whl; do printf '  %-80s %6s KB\n' "$(basename "$w")" $(( $(stat -c %s "$w") / 1024 )) >&2; done
  mkdir -p "$dir"; for w in "$wheels"/*.whl; do unzip -q -o "$w" -d "$dir"; done; rm -rf "$wheels"
  local before; before=$(du -sm "$dir" | cut -f1)
  (
    cd "$dir"
    # never imported: tests, Cython sources and declarations, C/C++ headers and sources, static libraries, caches
    find . -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +
    rm -rf pyarrow/include pyarrow/includes pyarrow/src
    find . -type f \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.h' -o -name '*.hpp' -o -name '*.cc' \
      -o -name '*.cpp' -o -name '*.a' -o -name '*.cmake' -o -name '*.pc' \) -delete
    # pyarrow: keep lib + compute/dataset/parquet/acero/fs/csv/json/ipc/feather (datasets imports pyarrow.parquet,
    # .dataset, .json, .compute; libarrow_python.so.2500 needs libarrow_substrait, so that library stays). Drop
    # Flight, ORC, Substrait's module, Parquet encryption, the cloud/HDFS file systems and the C++ test module: each
    # is imported by pyarrow in a try/except ImportError. Drop the unversioned and full-version copies of
    # libarrow_python*.so (wheels cannot hold symlinks, so they are full copies; the loader wants the .so.NNNN SONAME).
    rm -f pyarrow/libarrow_flight.so.* pyarrow/libarrow_python_flight.so* pyarrow/_flight.*.so pyarrow/flight.py \
      pyarrow/_orc.*.so pyarrow/_dataset_orc.*.so pyarrow/_substrait.*.so pyarrow/substrait.py \
      pyarrow/_parquet_encryption.*.so pyarrow/_dataset_parquet_encryption.*.so pyarrow/libarrow_python_parquet_encryption.so* \
      pyarrow/_s3fs.*.so pyarrow/_gcsfs.*.so pyarrow/_azurefs.*.so pyarrow/_hdfs.*.so pyarrow/_pyarrow_cpp_tests.*.so \
      pyarrow/libarrow_python.so pyarrow/libarrow_python.so.*.*.*
  )
  echo "tree: ${before} MB unpacked, $(du -sm "$dir" | cut -f1) MB stripped" >&2
}

if [ $mode = build ]; then
  bash ../shared/gpu/bundle.sh --qlora --data ""      # rebuilds .device/ from scratch (pydantic, seqeval, bitsandbytes)
  # trl: the pinned one in the archive below (with the datasets it was checked with), not a second, newest copy here
  rm -rf .device/site/trl .device/site/trl-*.dist-info
  stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
  fetch_tree "$stage/site-packages"
  echo "packing .device/trl-site.tar.xz (xz -9e, a few minutes on one core) ..." >&2
  tar -C "$stage/site-packages" --sort=name --owner=0 --group=0 --numeric-owner -cf - . | xz -9e -T1 > .device/trl-site.tar.xz
  sum=$(sha256sum .device/trl-site.tar.xz | cut -c1-12)
  cat >> .device/env.sh <<ENV
# TRL, datasets, pyarrow, ... (bench/bundle_trl.sh): unpacked once to /tmp/ftune-trl/site-packages (a folder of that
# name, for dill), which goes on PYTHONPATH right after .device/site
if [ ! -f /tmp/ftune-trl/.unpacked-$sum ]; then rm -rf /tmp/ftune-trl /tmp/ftune-trl.part && mkdir -p /tmp/ftune-trl.part/site-packages && tar -xJf .device/trl-site.tar.xz -C /tmp/ftune-trl.part/site-packages && touch /tmp/ftune-trl.part/.unpacked-$sum && mv /tmp/ftune-trl.part /tmp/ftune-trl; fi
_s="\$PWD/.device/site"; export PYTHONPATH="\${PYTHONPATH/#"\$_s"/\$_s:/tmp/ftune-trl/site-packages}"; unset _s
ENV
  tar_b=$(stat -c %s .device/trl-site.tar.xz)
  size=$(du -sm .device | cut -f1)
  tracked=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
  echo ".device: ${size} MB (trl-site.tar.xz: $(( tar_b / 1024 )) KB); the working tree besides: $(( tracked / 1048576 )) MB"
  echo "on the device (carry [\".device\"]): source .device/env.sh && python bench/llm_speed.py; cp bench/results/llm_speed.* \$OUT/"
  [ "$size" -le 62 ] || echo "warning: .device is ${size} MB, over 62 MB: with the project it may not fit in 64 MiB" >&2
  exit 0
fi

# --check: the same tree for this machine's Python, against a venv that holds what the device holds
VENV=${CHECK_VENV:-/tmp/trlcheck-venv}
base=${CHECK_TREE:-/tmp/trlcheck-tree-cp${PYVER/./}}; tree=$base/site-packages   # named so, as on the device
rm -rf "$base"; fetch_tree "$tree"
# what the device has (its image's package list; versions where seen there; torch: the CPU build on local disk,
# triton for liger-kernel's imports), plus pydantic and seqeval, which .device/site brings there
device_pkgs="torch==2.13.0 transformers==5.17.0 huggingface-hub==1.33.0 accelerate==1.15.0 tokenizers==0.23.2
  safetensors==0.8.0 triton==3.6.0 peft pandas numpy scikit-learn matplotlib rich typer httpx jinja2 psutil pyyaml
  requests tqdm filelock regex pytest pydantic seqeval"
[ -x "$VENV/bin/python" ] || "python$PYVER" -m venv "$VENV"
if [ "$(cat "$VENV/.device-pkgs" 2>/dev/null)" != "$device_pkgs" ]; then
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q $device_pkgs 2>&1 | grep -v "^WARNING: Location" >&2 || true
  echo "$device_pkgs" > "$VENV/.device-pkgs"
fi
# none of the packed packages in the venv itself (fsspec comes with huggingface-hub: the tree's copy must win)
"$VENV/bin/pip" uninstall -q -y trl datasets pyarrow dill multiprocess xxhash liger-kernel 2>/dev/null || true
echo "check venv: $("$VENV/bin/python" -c 'import torch, transformers, huggingface_hub as h, peft, accelerate; print("torch", torch.__version__, "transformers", transformers.__version__, "hub", h.__version__, "peft", peft.__version__, "accelerate", accelerate.__version__)')" >&2
env -i PATH=/usr/bin:/bin HOME="$HOME" HF_HUB_OFFLINE=1 PYTHONPATH="$tree" TREE="$tree" "$VENV/bin/python" -c '
import os, sys, importlib, importlib.metadata as md
tree = os.environ["TREE"]
import datasets, trl
from trl import SFTTrainer, SFTConfig
import pyarrow, pyarrow.parquet, pyarrow.dataset, pyarrow.json, pyarrow.compute, pyarrow.csv, pyarrow.feather, pyarrow.ipc
import trl.data_utils, trl.trainer.sft_trainer
import liger_kernel.transformers  # what TRL use_liger_kernel=True imports
bad = []
for m in ["trl", "datasets", "pyarrow", "dill", "multiprocess", "xxhash", "fsspec", "huggingface_hub", "liger_kernel"]:
    f = importlib.import_module(m).__file__
    dist = {"huggingface_hub": "huggingface-hub", "liger_kernel": "liger-kernel"}.get(m, m)
    print(f"  {m:16s} {md.version(dist):12s} {f}")
    if not f.startswith(tree): bad.append(m)
from trl.import_utils import is_liger_kernel_available
print("  trl sees liger-kernel:", is_liger_kernel_available())
# a little real work: a Dataset through map (multiprocess/dill), arrow files, parquet round trip, pyarrow.compute
import pyarrow as pa, pyarrow.compute as pc, tempfile
ds = datasets.Dataset.from_list([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}] * 8)
ds = ds.map(lambda e: {"n": len(e["messages"])}, num_proc=2)
with tempfile.TemporaryDirectory() as d:
    ds.to_parquet(d + "/x.parquet"); back = datasets.load_dataset("parquet", data_files=d + "/x.parquet", split="train", cache_dir=d)
assert back["n"] == [2] * 8 and pc.sum(pa.array([1, 2, 3])).as_py() == 6
from trl.data_utils import pack_dataset
print("  packed rows:", len(pack_dataset(datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5], [6]]}), 4, strategy="bfd")))
print("OK: all from the tree" if not bad else f"FAIL: not from the tree: {bad}")
sys.exit(1 if bad else 0)'
echo "tree: $tree ($(du -sm "$tree" | cut -f1) MB)" >&2
if [ $smoke = 1 ]; then
  echo "smoke: bench/llm_speed.py --quick --shapes qwen --rows trl trl_fast ftune --probes none (CPU, a few minutes)" >&2
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT; mkdir -p "$work/bench"; cp bench/llm_speed.py "$work/bench/"  # its results stay there
  env -i PATH="$VENV/bin:/usr/bin:/bin" HOME="$HOME" HF_HUB_OFFLINE=1 PYTHONPATH="$tree:$PWD/src" OMP_NUM_THREADS=2 \
    "$VENV/bin/python" "$work/bench/llm_speed.py" --quick --shapes qwen --rows trl trl_fast ftune --probes none
fi
