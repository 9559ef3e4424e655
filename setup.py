"""Only for the optional compiled kernels; everything else is in pyproject.toml.

``modelmix.kernels._ckernels`` is a plain shared library (loaded with ctypes, not imported). If it cannot
be built (no C compiler), installation still succeeds and modelmix uses its numba kernels instead.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "modelmix.kernels._ckernels",
            ["src/modelmix/kernels/ckernels.c"],
            # no fused multiply-add (it would change float32 rounding vs the reference); float64 statistics
            # use explicit lanes (kernels/reduce.py), so no reassociating flag may be added here
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-math-errno", "-fopenmp-simd", "-std=c11"],
            optional=True,
        )
    ]
)
