"""``python -m vsgd_bayes``: the same as the ``vsgd-bayes`` console script."""

from vsgd_bayes.apps.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
