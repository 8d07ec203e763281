#!/usr/bin/env bash
# SetFit as a peer for bench/fewshot.py, in its own venv and never in ftune's: a venv that sees ftune's .venv
# packages (torch, transformers, sentence-transformers, datasets' dependencies, the embedded model) through a .pth
# file, plus SetFit 1.2.0 and evaluate 0.4.6 (what SetFit imports and ftune does not need), installed without dependencies
# so nothing of ftune's lock changes.
#
#   bash bench/setfit_peer.sh            # makes /tmp/setfit-venv (SETFIT_VENV to put it elsewhere)
set -euo pipefail
[ -f pyproject.toml ] || cd "$(git rev-parse --show-toplevel)"
VENV=${SETFIT_VENV:-/tmp/setfit-venv}
SITE=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m venv --clear "$VENV"
echo "$SITE" > "$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/ftune-venv.pth"
"$VENV/bin/pip" install --quiet --no-deps setfit==1.2.0 evaluate==0.4.6
"$VENV/bin/python" -c "import setfit, datasets; print('setfit', setfit.__version__, 'datasets', datasets.__version__)"
