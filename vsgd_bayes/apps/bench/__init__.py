"""Benchmarks of VSGD against AdamW and SGD with momentum on small real tasks.

``vsgd-bayes bench TASK`` (see :mod:`vsgd_bayes.apps.bench.cli`) runs the protocol of
:mod:`vsgd_bayes.apps.bench.runner` on the tasks of :mod:`vsgd_bayes.apps.bench.tasks`; the
optimizers are built by :mod:`vsgd_bayes.apps.bench.optimizers`.
"""
