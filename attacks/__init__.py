"""Attacks, one sub-package per family; installed as ``advsuite.attacks``.

Sub-packages are imported on demand (e.g. ``advsuite.attacks.whitebox``), so importing one family
does not pull in the dependencies of another (``foolbox_ref`` imports foolbox).
"""
