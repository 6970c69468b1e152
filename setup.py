"""The one compiled part: splathead._jpeg (partial JPEG decoding for the recipes' loader).

It links the system's libjpeg-turbo (Debian/Ubuntu: libjpeg-dev; conda: libjpeg-turbo). Where
that is missing the build goes on without it and the loader decodes whole images instead.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("splathead._jpeg", ["csrc/jpeg_region.c"], libraries=["jpeg"],
                             optional=True)])
