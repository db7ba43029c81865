"""Build the optional compiled hot path of the boundary (metadata lives in pyproject.toml).

``taoism.boundary._fastpath`` links OpenSSL's libcrypto. It is optional: without a C compiler or
the OpenSSL headers the install still succeeds (setuptools prints a warning) and the boundary uses
its pure-Python path (docs/boundary.md, "The compiled hot path").
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "taoism.boundary._fastpath",
            ["taoism/boundary/_fastpath.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-std=c11"],
            optional=True,
        )
    ]
)
