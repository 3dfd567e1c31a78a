#!/usr/bin/env bash
# Create the venv VENV (default .venv, relative to the repository) and pip-install into it.
#
#   scripts/install-venv.sh                          .venv with `pip install -e '.[dev]'` (make install)
#   scripts/install-venv.sh /opt/fw/venv /vagrant    a venv with the project installed (the fw VM)
#
# Any arguments after VENV go to `pip install` as they are; the default is `-e .[dev]`. PYTHON
# names the interpreter that creates the venv (default python3). Runs from the repository root.
set -euo pipefail

cd "$(dirname "$0")/.."
venv=${1:-.venv}
[ $# -eq 0 ] || shift
[ $# -gt 0 ] || set -- -e '.[dev]'

"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "$@"
