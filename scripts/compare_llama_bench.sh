#!/usr/bin/env bash
# Compare `edgellm bench` with llama.cpp's own `llama-bench` on the same model, threads and cores.
#
# llama-bench is built from the llama.cpp sources vendored in the sdist of the llama-cpp-python
# version that is installed (so both run the same ggml code), and cached. The two tools then run
# alternately, ROUNDS times each, so drift in clock speed or heat hits both alike; the ratios
# edgellm/llama-bench of the mean tokens/s are printed per test (1.00 = identical).
#
# Usage:
#   scripts/compare_llama_bench.sh MODEL.gguf [-t THREADS] [-p N_PROMPT] [-n N_GEN] [-r REPS] [--rounds K]
#   scripts/compare_llama_bench.sh --build-only
# Environment:
#   PYTHON            the Python that has edgellm and llama-cpp-python (default: python3)
#   LLAMA_BENCH_CACHE where the built llama-bench is kept (default: ~/.cache/edgellm/llama-bench)
#   JOBS              parallel compile jobs (default: number of CPUs)
set -euo pipefail

PYTHON="${PYTHON:-python3}"
CACHE="${LLAMA_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgellm/llama-bench}"
JOBS="${JOBS:-$(nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)}"

die() { echo "error: $*" >&2; exit 1; }
say() { echo "$*" >&2; }

MODEL=""
THREADS=""
N_PROMPT=512
N_GEN=128
REPS=5
ROUNDS=2
BUILD_ONLY=0
while [ $# -gt 0 ]; do
    case "$1" in
        -t) THREADS="$2"; shift 2 ;;
        -p) N_PROMPT="$2"; shift 2 ;;
        -n) N_GEN="$2"; shift 2 ;;
        -r) REPS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --build-only) BUILD_ONLY=1; shift ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) MODEL="$1"; shift ;;
    esac
done
[ "$BUILD_ONLY" = 1 ] || [ -n "$MODEL" ] || die "no model: scripts/compare_llama_bench.sh MODEL.gguf (see --help)"
[ "$BUILD_ONLY" = 1 ] || [ -f "$MODEL" ] || die "$MODEL: no such file"

VERSION="$("$PYTHON" -c 'from importlib.metadata import version; print(version("llama-cpp-python"))' 2>/dev/null)" \
    || die "llama-cpp-python is not installed for $PYTHON (set PYTHON=/path/to/venv/bin/python)"
BIN="$CACHE/$VERSION/$(uname -m)/llama-bench"

build_llama_bench() {
    local work="$CACHE/$VERSION/src"
    mkdir -p "$work"
    say "building llama-bench from llama-cpp-python $VERSION's vendored llama.cpp (once; cached in $CACHE)"
    if [ ! -d "$work/llama_cpp_python-$VERSION" ]; then
        "$PYTHON" -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$work" \
            || die "pip could not download the llama-cpp-python $VERSION sdist"
        tar -xzf "$work/llama_cpp_python-$VERSION.tar.gz" -C "$work"
    fi
    local src="$work/llama_cpp_python-$VERSION/vendor/llama.cpp"
    [ -f "$src/CMakeLists.txt" ] || die "no vendored llama.cpp in the sdist ($src)"
    local flags=""
    # The AMX kernels a native x86 build compiles crash on batched prompts (llama.cpp issue 20824).
    [ "$(uname -m)" = x86_64 ] && flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON \
        -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" >&2
    cmake --build "$work/build" --target llama-bench -j "$JOBS" >&2
    mkdir -p "$(dirname "$BIN")"
    cp "$work/build/bin/llama-bench" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
    rm -rf "$work/build"  # the binary is static; the object files are not needed again
}

[ -x "$BIN" ] || build_llama_bench
say "llama-bench: $BIN"
[ "$BUILD_ONLY" = 1 ] && exit 0

# Same threads for both: edgellm's choice unless -t is given. Both inherit this shell's CPU
# affinity (run under `taskset -c LIST` to compare on chosen cores); edgellm is told not to narrow it.
EDGELLM=("$PYTHON" -m edgellm bench -m "$MODEL" -p "$N_PROMPT" -n "$N_GEN" -r "$REPS" --cores all --json)
[ -n "$THREADS" ] && EDGELLM+=(-t "$THREADS")

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
for round in $(seq 1 "$ROUNDS"); do
    say "round $round/$ROUNDS: edgellm bench"
    "${EDGELLM[@]}" > "$OUT/edgellm-$round.json" 2> "$OUT/edgellm-$round.err" \
        || { cat "$OUT/edgellm-$round.err" >&2; die "edgellm bench failed"; }
    # llama-bench with edgellm's threads, batch sizes, KV type and flash-attention setting.
    read -r T B UB KV FA < <("$PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["results"][0]["threads"], d["n_batch"], d["n_ubatch"], d["kv_type"], int(d["flash_attn"]))' "$OUT/edgellm-$round.json")
    say "round $round/$ROUNDS: llama-bench -t $T -b $B -ub $UB -ctk $KV -ctv $KV -fa $FA"
    "$BIN" -m "$MODEL" -p "$N_PROMPT" -n "$N_GEN" -r "$REPS" -t "$T" -b "$B" -ub "$UB" -ctk "$KV" -ctv "$KV" -fa "$FA" -o json \
        > "$OUT/llama-$round.json" 2> "$OUT/llama-$round.err" \
        || { cat "$OUT/llama-$round.err" >&2; die "llama-bench failed"; }
done

"$PYTHON" - "$OUT" "$ROUNDS" <<'EOF'
import json, statistics, sys
from pathlib import Path

out, rounds = Path(sys.argv[1]), int(sys.argv[2])
ours: dict[str, list[float]] = {}
theirs: dict[str, list[float]] = {}
for r in range(1, rounds + 1):
    for row in json.loads((out / f"edgellm-{r}.json").read_text())["results"]:
        ours.setdefault(row["test"], []).append(row["tps_mean"])
    for row in json.loads((out / f"llama-{r}.json").read_text()):
        test = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
        theirs.setdefault(test, []).append(row["avg_ts"])
# Per round the two runs are at most minutes apart, so per-round ratios cancel slow drift (heat,
# other load); their median is the figure to quote, their range shows how noisy the host was.
print(f"{'test':<12} {'edgellm t/s':>12} {'llama-bench t/s':>16} {'ratio':>7} {'median':>7}  per-round ratios")
for test in ours:
    if test not in theirs:
        continue
    a, b = statistics.mean(ours[test]), statistics.mean(theirs[test])
    per_round = [x / y for x, y in zip(ours[test], theirs[test])]
    print(f"{test:<12} {a:>12.2f} {b:>16.2f} {a / b:>7.3f} {statistics.median(per_round):>7.3f}  "
          + " ".join(f"{r:.3f}" for r in per_round))
print(f"({rounds} alternating rounds; ratio = edgellm / llama-bench, 1.000 = identical)")
EOF
"$PYTHON" "$(dirname "$0")/hostinfo.py"
