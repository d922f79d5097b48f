"""Deprecated: moved to :mod:`vsgd_bayes.validation.kalman` in 0.2; this alias goes in 0.3."""

from vsgd_bayes._moved import forward_moved_module

forward_moved_module(globals())
