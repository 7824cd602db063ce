"""The one compiled piece: tiercache.models.runtime._qmatmul (products on ggml blocks
and a one-token step's attention).

Everything else is in pyproject.toml. The extension is optional: without a C compiler
the install goes on and the decoder runs its TensorFlow path
(``tiercache.models.runtime.kernels.available()`` says which).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "tiercache.models.runtime._qmatmul",
    sources=["tiercache/models/runtime/_qmatmul.c"],
    # -ffp-contract=off: the weights are decoded with the reference's separate
    # multiply and add (no fused multiply-add), so they equal quant.dequantize
    extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off", "-std=c11"],
    extra_link_args=["-fopenmp"],
    libraries=["m"],
    optional=True,
)])
