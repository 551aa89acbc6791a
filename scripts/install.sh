#!/usr/bin/env bash
# Install edgellm into the active Python environment (a venv: Raspberry Pi OS refuses system pip).
#
#   scripts/install.sh          edgellm and its dependencies
#   scripts/install.sh --test   the same plus the test extra, as an editable install (and
#                               systemd-analyze, from Debian's systemd package, when missing)
#
# llama-cpp-python is compiled from source for this CPU (about 8 minutes on a 2-core x86 machine,
# longer on a Pi). The wheel is kept in $EDGELLM_WHEEL_CACHE (default ~/.cache/edgellm/wheels),
# keyed by version, architecture and CPU flags, so later installs take seconds.
# On x86_64 the build leaves out llama.cpp's Intel AMX kernels, which segfault on batched
# prompts (llama.cpp issue 20824); pip's own wheel cache ignores CMAKE_ARGS, hence --no-cache-dir.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python}"
command -v "$python" >/dev/null 2>&1 || python=python3
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
arch="$(uname -m)"
extra_cmake=""
if [ "$arch" = "x86_64" ]; then
  no_amx='-mno-amx-tile\ -mno-amx-int8\ -mno-amx-bf16'
  extra_cmake="-DCMAKE_C_FLAGS=${no_amx} -DCMAKE_CXX_FLAGS=${no_amx}"
fi
# GGML_RPC: the RPC backend behind `edgellm worker` and `--rpc` (it adds no device, and so no cost,
# until a worker is named); RDMA transport off, as edge boards have no RDMA NICs.
export CMAKE_ARGS="${CMAKE_ARGS:-} -DGGML_RPC=ON -DGGML_RPC_RDMA=OFF ${extra_cmake}"

hash8() {  # macOS has shasum, Linux sha256sum
  if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi | cut -c1-"$1"
}

installed_ok() {
  "$python" - "$version" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
import llama_cpp
info = llama_cpp.llama_print_system_info().decode()
has_rpc = hasattr(llama_cpp.llama_cpp._lib, "ggml_backend_rpc_add_server")
sys.exit(0 if version("llama-cpp-python") == sys.argv[1] and "AMX_INT8 = 1" not in info and has_rpc else 1)
PY
}

"$python" -m pip install --quiet --upgrade pip wheel >/dev/null

if installed_ok; then
  echo "llama-cpp-python $version already installed (RPC backend, no AMX kernels)"
else
  cpu_flags="$( (grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || sysctl -n machdep.cpu.brand_string 2>/dev/null || echo unknown) | hash8 12)"
  key="llama_cpp_python-${version}-${arch}-$(echo "$CMAKE_ARGS" | hash8 8)-${cpu_flags}"
  cache="${EDGELLM_WHEEL_CACHE:-$HOME/.cache/edgellm/wheels}/${key}"
  if ! ls "$cache"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $version for this CPU (about 8 minutes; once per machine) ..."
    mkdir -p "$cache"
    "$python" -m pip wheel --no-deps --no-cache-dir -w "$cache" "llama-cpp-python==${version}"
  fi
  "$python" -m pip install --force-reinstall --no-deps "$cache"/llama_cpp_python-*.whl
  "$python" -m pip install --quiet "llama-cpp-python==${version}"  # its pure-Python dependencies
  installed_ok || { echo "error: llama-cpp-python still reports AMX_INT8 = 1, or was built without its RPC backend" >&2; exit 1; }
fi

if [ "${1:-}" = "--test" ]; then
  "$python" -m pip install --quiet -e "${here}[test]"
  # The service tests check the generated units with systemd's own verifier (Debian: systemd).
  if ! command -v systemd-analyze >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get install -y -qq systemd >/dev/null || echo "warning: could not install systemd (systemd-analyze)" >&2
    else
      echo "warning: systemd-analyze is missing; the unit checks in tests/test_service_unit.py need it" >&2
    fi
  fi
else
  "$python" -m pip install --quiet "${here}"
fi
echo "edgellm installed: $(command -v edgellm || echo "$python -m edgellm")"
