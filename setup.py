"""Build of numatune's C++ core (numatune._kernels).

Every kernels/*.cpp is one translation unit of one extension. A file whose name ends in
_avx2.cpp or _avx512.cpp holds an instruction-set variant: it is compiled with that ISA's
flags and only on x86-64; everything else is compiled for the baseline of the target, so the
module loads on any CPU of the architecture and kernels/dispatch.cpp picks variants from CPUID
at run time. setuptools compiles all sources of an Extension with the same flags, hence the
small build_ext below that compiles the variant files itself.
"""
import glob
import os
import platform

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup
from setuptools.command.build_ext import build_ext

ISA_FLAGS = {
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-mbmi2"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni",
               "-mavx512bf16", "-mavx2", "-mfma", "-mf16c", "-mbmi2"],
}
# -fno-trapping-math: nothing here relies on floating-point traps, and without it GCC will not
# vectorise loops that clamp and convert floats (the engine's SiLU ran scalar).
COMMON_FLAGS = ["-O3", "-std=c++17", "-fno-math-errno", "-fno-trapping-math", "-Wall", "-Wno-unused-function"]
IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64")


def isa_of(path):
    stem = os.path.basename(path)[: -len(".cpp")]
    for isa in ISA_FLAGS:
        if stem.endswith("_" + isa):
            return isa
    return None


ALL_SOURCES = sorted(glob.glob("kernels/*.cpp"))
BASE_SOURCES = [s for s in ALL_SOURCES if isa_of(s) is None]
VARIANT_SOURCES = [s for s in ALL_SOURCES if isa_of(s) is not None] if IS_X86_64 else []


class BuildWithIsaVariants(build_ext):
    def build_extension(self, ext):
        objects = []
        for source in VARIANT_SOURCES:
            objects += self.compiler.compile(
                [source],
                output_dir=self.build_temp,
                include_dirs=ext.include_dirs,
                macros=ext.define_macros,
                extra_postargs=COMMON_FLAGS + ["-fPIC"] + ISA_FLAGS[isa_of(source)],
                depends=glob.glob("kernels/*.h"),
            )
        ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)


kernels = Pybind11Extension(
    "numatune._kernels",
    BASE_SOURCES,
    include_dirs=["kernels"],
    define_macros=[("NUMATUNE_X86_VARIANTS", "1" if IS_X86_64 else "0")],
    extra_compile_args=COMMON_FLAGS,
    extra_link_args=["-pthread"],
    cxx_std=17,
    # The variant objects reach the link as extra_objects, which setuptools does not date-check.
    depends=glob.glob("kernels/*.h") + VARIANT_SOURCES,
)

setup(ext_modules=[kernels], cmdclass={"build_ext": BuildWithIsaVariants})
