#!/usr/bin/env bash
# verl and turngym's verl extra in their own venv (`make test-verl`), resolved with verl's own pins (it pins
# transformers <5.11 and tensordict <=0.10) under the CPU torch pin, as a verl user installs turngym.
# Usage: bash scripts/install_verl.sh [VENV_DIR]   (default .venv-verl at the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-verl}"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -P -m pip install -q --upgrade pip
"$venv/bin/python" -P -m pip install -q -c constraints-cpu.txt -e ".[verl,dev]"
touch "$venv/.turngym-installed"
