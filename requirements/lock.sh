#!/usr/bin/env bash
# `make lock`: regenerate the hash-locked requirement files the Dockerfile installs from, one per image,
# for the images' platform (linux x86_64, CPython 3.11) whatever machine runs it. Extra arguments go to
# every `uv pip compile` (`make lock LOCK_ARGS=--upgrade`, or LOCK_ARGS="--upgrade-package numpy");
# without them the current pins are kept.
#   serve.txt   [project] dependencies (the service: no torch)
#   distill.txt + [distill] (torch's CPU build), shared packages held at serve.txt's versions
#   bench.txt   + [bench] (locust), shared packages held at serve.txt's versions
# Each also locks the build backend (build.in): installing the project itself then fetches nothing unlocked.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
TORCH_INDEX=https://download.pytorch.org/whl/cpu
PLATFORM=(--python-version 3.11 --python-platform x86_64-manylinux_2_28)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet "uv==$UV_VERSION"

# PyPI's torch for linux depends on the CUDA wheels; the CPU build exists only on PyTorch's index. Fetch it
# so the resolver reads its metadata and hashes the very file the distill image installs.
"$work/venv/bin/pip" download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 --index-url "$TORCH_INDEX" -d "$work/wheels" -r requirements/torch-cpu.txt

compile() {
    local out=$1
    shift
    "$work/venv/bin/uv" pip compile --quiet pyproject.toml requirements/build.in "${PLATFORM[@]}" \
        --only-binary :all: --generate-hashes --custom-compile-command "make lock" -o "requirements/$out" "$@"
}
compile serve.txt "$@"
compile distill.txt --extra distill --constraint requirements/serve.txt \
    --find-links "$work/wheels" --override requirements/torch-cpu.txt "$@"
compile bench.txt --extra bench --constraint requirements/serve.txt "$@"
echo "wrote requirements/serve.txt requirements/distill.txt requirements/bench.txt"
