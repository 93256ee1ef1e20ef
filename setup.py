"""Builds the compiled core (distautograd._core) against the torch installed in the environment.

Everything else is in pyproject.toml. The core is optional: where no C++ compiler (or no torch to
build against) is found, or the build fails, the package installs without it and runs its Python
path (it says so once, in one line, when it starts). DISTAUTOGRAD_NATIVE=0 skips the build.
"""

import glob
import os
import shutil
import sys

from setuptools import setup


def _native():
    if os.environ.get("DISTAUTOGRAD_NATIVE", "1") == "0" or not shutil.which(os.environ.get("CXX", "c++")):
        return {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        return {}

    class OptionalBuild(BuildExtension):
        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:  # the Python path still works: say why the core is missing, once
                print(f"distautograd: the compiled core was not built ({exc}); the package uses its Python path",
                      file=sys.stderr)

    sources = sorted(glob.glob("distautograd/native/csrc/*.cpp"))
    core = CppExtension("distautograd._core", sources, extra_compile_args=["-O2", "-std=c++17", "-Wall"])
    return {"ext_modules": [core], "cmdclass": {"build_ext": OptionalBuild.with_options(use_ninja=True)}}


setup(**_native())
