#!/usr/bin/env bash
# Runs `cargo xtask gpu-check` on a machine with an NVIDIA GPU, from any directory:
#   bash scripts/gpu-check.sh [--out DIR] [other gpu-check flags]
# DIR (default target/gpu-check) gets what the machine has (machine.txt), the whole log
# (gpu-check.log) and the check's report and per-backend logs.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/target/gpu-check"
args=()
while (($#)); do
    case "$1" in
        --out) out="${2:?--out needs a directory}"; shift 2 ;;
        --out=*) out="${1#--out=}"; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
# A relative DIR is taken from where the script was called, as any command's would be.
mkdir -p "$out" && out="$(cd "$out" && pwd)" || exit 2
cd "$root" || exit 2
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
cargo xtask gpu-check --out "$out" "${args[@]}" 2>&1 | tee "$out/gpu-check.log"
exit "${PIPESTATUS[0]}"
