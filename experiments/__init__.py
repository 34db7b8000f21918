"""Scripted experiments E1-E6, one module each, run by the ``metainf-repro`` harness.

The interface every experiment implements is in :mod:`experiments.base`; the list of experiment modules is in
:mod:`experiments.registry`.
"""
