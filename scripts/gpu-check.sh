#!/usr/bin/env bash
# The one command of a GPU session: `bash scripts/gpu-check.sh` from the repository root.
# Prints what the machine has, then runs `cargo xtask gpu-check` with its whole log in
# $OUT (the device tool brings that folder back), else in target/gpu-check.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-target/gpu-check}"
mkdir -p "$out"
{
    echo "== machine"
    nvidia-smi -L || echo "nvidia-smi: not found"
    for tool in cargo nvcc python3; do
        printf '%s: %s\n' "$tool" "$(command -v "$tool" || echo 'not found')"
    done
} 2>&1 | tee "$out/machine.txt"
if ! command -v cargo >/dev/null; then
    echo "no cargo here: gpu-check builds the backends from source with cargo" >&2
    exit 2
fi
cargo xtask gpu-check "$@" 2>&1 | tee "$out/gpu-check.log"
exit "${PIPESTATUS[0]}"
