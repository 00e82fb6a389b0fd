"""The application layer: YAML configurations, experiments, NetCDF results,
diagnostics, fitting, plots and the ``fourdvar`` command line.

It builds on the engine (:mod:`fourdvar` outside this subpackage) through the
engine's public API only; the engine never imports it.  Nothing is imported
here, so ``import fourdvar.app`` pulls in no YAML, NetCDF or matplotlib.
"""
