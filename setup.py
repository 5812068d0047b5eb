"""The package's one compiled part: the native ``ai.onnxcomp`` op library (runtime/csrc/).

It is a plain shared library, not a Python extension: any onnxruntime host loads it
(``SessionOptions.register_custom_ops_library(onnxcomp.runtime.native_library_path())`` in Python,
``RegisterCustomOpsLibrary`` in C/C++, C#, Java), and onnxcomp's own decode at load calls its C
entry points through ctypes, as the compressor does its per-tensor quantizer and histograms
(runtime/csrc/quantize.cc). It needs no onnxruntime headers or libraries (runtime/csrc/ort_abi.h
declares the part of the C API it uses). Where no C++ compiler exists the build skips it with a
warning and the pure-Python paths (constriction, numpy: the same bits) serve every path.
"""

from __future__ import annotations

import os
import shutil
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

LIBRARY = "onnxcomp.runtime.libonnxcomp_ops"
SOURCES = ["runtime/csrc/decode.cc", "runtime/csrc/exports.cc", "runtime/csrc/ops.cc", "runtime/csrc/quantize.cc"]


class BuildSharedLibrary(build_ext):
    """Builds ``libonnxcomp_ops.so`` (not ``*.cpython-*.so``: it is not imported by Python)."""

    def get_ext_filename(self, fullname: str) -> str:
        # Called with the full dotted name or with its last part (distutils' get_ext_fullpath).
        if LIBRARY.endswith(fullname) and fullname.split(".")[-1] == LIBRARY.split(".")[-1]:
            *package, name = fullname.split(".")
            suffix = {"win32": ".dll", "darwin": ".dylib"}.get(sys.platform, ".so")
            return os.path.join(*package, name + suffix)
        return super().get_ext_filename(fullname)

    def get_export_symbols(self, ext):  # no PyInit_: the library exports C entry points only
        return []

    def build_extension(self, ext):
        # No C++ compiler: the Python paths remain, with a warning. A compiler that fails on
        # these sources is a bug and fails the install (a stale library must never be kept).
        command = getattr(self.compiler, "compiler_cxx", None) or getattr(self.compiler, "compiler_so", None) or []
        if command and shutil.which(command[0]) is None:
            print(f"warning: no C++ compiler ({command[0]}): the native ai.onnxcomp library is not built; "
                  f"the pure-Python paths serve everything", file=sys.stderr)
            return
        super().build_extension(ext)


setup(
    ext_modules=[Extension(
        LIBRARY,
        sources=SOURCES,
        depends=["runtime/csrc/decode.h", "runtime/csrc/ort_abi.h", "runtime/csrc/quantize.h"],
        language="c++",
        extra_compile_args=["-std=c++17", "-O3", "-g0", "-fvisibility=hidden"],
        extra_link_args=["-pthread"],
    )],
    cmdclass={"build_ext": BuildSharedLibrary},
)
