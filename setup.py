"""Maps the top-level plugin folders into the ``advsuite`` namespace (see pyproject.toml)."""

from setuptools import find_packages, setup

PLUGIN_FOLDERS = ("attacks", "defenses", "detectors", "conf")

packages = find_packages(include=["advsuite", "advsuite.*"])
for folder in PLUGIN_FOLDERS:
    packages += [f"advsuite.{folder}"] + [f"advsuite.{folder}.{sub}" for sub in find_packages(folder)]

setup(packages=packages)
