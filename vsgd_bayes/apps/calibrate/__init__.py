"""``vsgd-bayes calibrate``: does the gradient posterior know the gradient?

* :mod:`~vsgd_bayes.apps.calibrate.metrics`: the metrics, pure numpy functions;
* :mod:`~vsgd_bayes.apps.calibrate.synthetic`: a stream with a known answer (the tests of the
  instrument);
* :mod:`~vsgd_bayes.apps.calibrate.optimizers`: the optimizers under study, one row each;
* :mod:`~vsgd_bayes.apps.calibrate.tasks`: the tasks and their full-batch gradients;
* :mod:`~vsgd_bayes.apps.calibrate.harvest`: training with measurements at checkpoints (torch);
* :mod:`~vsgd_bayes.apps.calibrate.report`: seeds aggregated, tables and figures;
* :mod:`~vsgd_bayes.apps.calibrate.cli`: the command line.
"""
