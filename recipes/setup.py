"""The recipes' one compiled part: splathead_recipes._jpeg (partial JPEG decoding for the loader).

It links the system's libjpeg-turbo (Debian/Ubuntu: libjpeg-dev; conda: libjpeg-turbo). Where
that is missing the build goes on without it and the loader decodes whole images instead.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("splathead_recipes._jpeg", ["csrc/jpeg_region.c"],
                             libraries=["jpeg"], optional=True)])
