#!/usr/bin/env bash
# Run fastrnn's test suite with the compiled kernels built under AddressSanitizer.
#
#   tests/asan.sh [extra pytest arguments]        (from anywhere; needs gcc, or CC=clang)
#
# The checkout is copied to a temporary directory (the extensions built in place there are
# instrumented, the checkout's own build is left alone), ASan's runtime is preloaded into
# the (uninstrumented) Python interpreter, and the suite runs there, benchmarks and slow
# tests excluded, and the nvcc compile check (nvcc crashes with ASan's runtime preloaded,
# which every child process inherits). Leak detection is off: CPython keeps objects alive until exit by design.
# Exits non-zero if a test fails or ASan reports anything (reports are printed).
# Environment: PYTHON (default python3), CC, KEEP_ASAN_DIR=1 to keep the temporary copy.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
CC="${CC:-gcc}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/fastrnn-asan.XXXXXX")"
if [[ "${KEEP_ASAN_DIR:-0}" != 1 ]]; then
    trap 'rm -rf "$WORK"' EXIT
fi

# Copy the sources: tracked and untracked-but-not-ignored files of a git checkout (no build
# outputs), else the whole tree without compiled extensions.
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
        | tar --null --ignore-failed-read -T - -cf -) | tar -xf - -C "$WORK"
else
    cp -a "$ROOT/." "$WORK/"
    find "$WORK" \( -name '*.so' -o -name '*.pyd' -o -name build \) -prune -exec rm -rf {} +
fi

ASAN_LIB="$("$CC" -print-file-name=libasan.so)"
if [[ ! -e "$ASAN_LIB" ]]; then
    echo "asan.sh: $CC has no libasan.so (install the compiler's AddressSanitizer runtime)" >&2
    exit 2
fi
# C++ extensions the tests import (jaxlib, matplotlib) throw exceptions; ASan intercepts
# __cxa_throw and must find the real one when it starts, so libstdc++ is preloaded with it.
STDCXX_LIB="$("$CC" -print-file-name=libstdc++.so.6)"
[[ -e "$STDCXX_LIB" ]] && ASAN_LIB="$ASAN_LIB:$STDCXX_LIB"

echo "asan.sh: building the extensions with -fsanitize=address in $WORK"
(cd "$WORK" && CC="$CC" \
    CFLAGS="-fsanitize=address -fno-omit-frame-pointer -g" \
    LDFLAGS="-fsanitize=address" \
    "$PYTHON" setup.py build_ext --inplace -q)

LOG_DIR="$WORK/asan-logs"
mkdir -p "$LOG_DIR"
echo "asan.sh: running the tests with $ASAN_LIB preloaded"
status=0
(cd "$WORK" && \
    LD_PRELOAD="$ASAN_LIB${LD_PRELOAD:+:$LD_PRELOAD}" \
    ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86:log_path=$LOG_DIR/asan:${ASAN_OPTIONS:-}" \
    "$PYTHON" - <<'EOF'
import pathlib, sys
import fastrnn
here = pathlib.Path.cwd().resolve()
if here not in pathlib.Path(fastrnn.__file__).resolve().parents:
    sys.exit(f"asan.sh: imported {fastrnn.__file__}, not the instrumented copy in {here}")
EOF
) || status=$?
if [[ $status == 0 ]]; then
    (cd "$WORK" && \
        LD_PRELOAD="$ASAN_LIB${LD_PRELOAD:+:$LD_PRELOAD}" \
        ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86:log_path=$LOG_DIR/asan:${ASAN_OPTIONS:-}" \
        "$PYTHON" -m pytest tests -q -p no:cacheprovider -m "not slow and not bench" \
            --ignore=tests/test_benchmarks.py \
            --deselect tests/test_gpu_backend_cpu.py::test_cuda_source_compiles "$@") || status=$?
fi

reports=("$LOG_DIR"/asan.*)
if [[ -e "${reports[0]}" ]]; then
    echo "asan.sh: AddressSanitizer reported errors:" >&2
    cat "${reports[@]}" >&2
    exit 1
fi
if [[ $status != 0 ]]; then
    echo "asan.sh: the test run failed (exit status $status)" >&2
    exit "$status"
fi
echo "asan.sh: no AddressSanitizer report; tests passed"
