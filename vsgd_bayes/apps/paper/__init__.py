"""The paper's image-classification setups (CIFAR-100, Tiny ImageNet-200) in plain torch.

:mod:`~vsgd_bayes.apps.paper.data` reads the data sets from their distributed layouts,
:mod:`~vsgd_bayes.apps.paper.models` defines VGG16/19-bn, ConvMixer-256/8 and ResNeXt-18,
:mod:`~vsgd_bayes.apps.paper.train` runs the training loop with exact checkpoint/resume, and
:mod:`~vsgd_bayes.apps.paper.cli` is ``vsgd-bayes paper EXPERIMENT --data-dir DIR``.
"""
