"""Only the C extension lives here; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "surge.realtime._sendmany",
            ["src/surge/realtime/_sendmany.c"],
            extra_compile_args=["-O2"],
        )
    ]
)
