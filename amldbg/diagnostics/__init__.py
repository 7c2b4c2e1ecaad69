"""Diagnostics a script writes about itself: the environment snapshot (:mod:`.envsnap`).

This package imports only :mod:`amldbg.core`.
"""
