"""Build the compiled kernels.

OpenMP is used when the compiler supports it and skipped otherwise (the kernels then run
serially; see fastrnn/_cpu/_openmp.pxd). Flags are -O3 and portable: the large GEMMs are in
BLAS, which picks its code for the CPU at run time, and the gate math and the per-step GEMMs
are compiled for AVX-512 (x86-64-v4), AVX2+FMA (x86-64-v3) and baseline x86-64 with the
choice made at load time (FR_HOT and FR_WIDE in csrc/compiler.h). Set FASTRNN_NATIVE=1 to add
-march=native for a local, non-portable build.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _compiler_accepts(flags):
    """True if the C compiler builds and links a tiny OpenMP program with ``flags``."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    src = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, "t.c")
        with open(path, "w") as f:
            f.write(src)
        cmd = cc + flags + [path, "-o", os.path.join(tmp, "t")]
        return subprocess.run(cmd, capture_output=True).returncode == 0
    except OSError:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_flags():
    # -fno-trapping-math lets gcc if-convert the clamps and selects in the float
    # activations (csrc/activations.h) so their loops vectorise; it changes no results.
    compile_args = ["-O3", "-fno-trapping-math"]
    link_args = []
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")]
    if sys.platform != "win32" and os.environ.get("FASTRNN_DISABLE_OPENMP") != "1" \
            and _compiler_accepts(["-fopenmp"]):
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
        macros.append(("FASTRNN_HAVE_OPENMP", "1"))
    else:
        print("fastrnn: building without OpenMP (kernels will run on one thread)")
    if os.environ.get("FASTRNN_NATIVE") == "1":
        compile_args.append("-march=native")
    return compile_args, link_args, macros


compile_args, link_args, macros = _build_flags()


def _extension(name, source, extra_compile_args=()):
    return Extension(
        name,
        [source],
        include_dirs=[os.path.join(HERE, "csrc"), np.get_include()],
        extra_compile_args=compile_args + list(extra_compile_args),
        extra_link_args=link_args,
        define_macros=macros,
        depends=[os.path.join("csrc", f) for f in sorted(os.listdir(os.path.join(HERE, "csrc")))],
    )


# One module per job: openmp (build and process facts), recurrent (the RNN layer's stages),
# dense (the dense layers' GEMM), generate (the token loop), loss (the fused softmax
# cross-entropy), update (fused optimizer steps), arrays (the argument checks' facts about
# arrays: overlapping byte ranges, integer ranges).
extensions = [
    _extension(f"fastrnn._cpu.{name}", f"fastrnn/_cpu/{name}.pyx")
    for name in ("openmp", "recurrent", "dense", "generate", "loss", "arrays")
]
# The optimizer updates equal NumPy's bit for bit: no fused multiply-adds (one rounding
# where NumPy has two, e.g. under FASTRNN_NATIVE=1); -fno-math-errno lets sqrt vectorise
# (its argument is never negative there) and changes no result.
extensions.append(_extension("fastrnn._cpu.update", "fastrnn/_cpu/update.pyx",
                             ["-ffp-contract=off", "-fno-math-errno"]))

setup(
    ext_modules=cythonize(extensions, language_level=3,
                          compiler_directives={"embedsignature": True}),
)
