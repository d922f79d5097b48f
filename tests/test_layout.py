"""The layout of ``docs/design.md``: old import paths still work for one release, and warn.

0.2 moved each method's modules into one package per link of the chain. The 0.1 paths
(``vsgd_bayes.rule``, ``vsgd_bayes.model``, ...) are stubs: importing one raises a single
``DeprecationWarning`` naming the new path, attributed to the importing line (so Python's
default filter shows it in ``__main__``), and every attribute, private ones included, is the
new module's object. Each import runs in a fresh interpreter, where the warning is raised.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes._moved import MOVED_MODULES, REMOVED_IN

#: One public and one private attribute of each old module, looked up through the stub.
ATTRIBUTES = {
    "vsgd_bayes.rule": ("step", "VSGDState"),
    "vsgd_bayes.constant_rule": ("step", "ConstantVSGDState"),
    "vsgd_bayes.kalman_rule": ("step", "_DEFAULTS"),
    "vsgd_bayes.elbo": ("one_step_elbo", "_LOG_2PI"),
    "vsgd_bayes.model": ("one_step_model", "_check_count"),
    "vsgd_bayes.kalman_validation": ("run_checks", "_dense_filtering_posterior"),
    "vsgd_bayes.optax_kalman": ("kalman_vsgd", "_DEFAULTS"),
}


def run_fresh(code: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_moved_module_is_listed():
    assert set(ATTRIBUTES) == set(MOVED_MODULES)


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_an_old_path_warns_once_and_forwards_to_the_new_module(old):
    new = MOVED_MODULES[old]
    public, private = ATTRIBUTES[old]
    report = run_fresh(
        f"""
        import importlib, json, warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            old = importlib.import_module({old!r})
        new = importlib.import_module({new!r})
        namespace = {{}}
        exec("from {old} import *", namespace)
        print(json.dumps({{
            "warnings": [[w.category.__name__, str(w.message), w.filename] for w in caught
                         if issubclass(w.category, DeprecationWarning)
                         and "vsgd_bayes" in str(w.message)],
            "same_public": getattr(old, {public!r}) is getattr(new, {public!r}),
            "same_private": getattr(old, {private!r}) is getattr(new, {private!r}),
            "star": sorted(set(getattr(new, "__all__", [])) - set(namespace)),
        }}))
        """
    )
    assert len(report["warnings"]) == 1, report["warnings"]
    category, message, filename = report["warnings"][0]
    assert category == "DeprecationWarning"
    assert old in message and new in message and REMOVED_IN in message
    # Attributed to the importing line (the -c script), not to the stub or importlib.
    assert filename == "<string>", filename
    assert report["same_public"] and report["same_private"]
    assert report["star"] == []


def test_check_of_the_check_a_missing_attribute_names_the_old_module():
    report = run_fresh(
        """
        import json, warnings
        warnings.simplefilter("ignore")
        import vsgd_bayes.rule as old
        try:
            old.no_such_name
        except AttributeError as error:
            print(json.dumps({"error": str(error)}))
        """
    )
    assert report["error"] == "module 'vsgd_bayes.rule' has no attribute 'no_such_name'"


def test_the_renamed_constant_elbo_is_forwarded():
    report = run_fresh(
        """
        import json, warnings
        warnings.simplefilter("ignore")
        from vsgd_bayes.elbo import constant_one_step_elbo
        from vsgd_bayes.rules.constant import one_step_elbo
        print(json.dumps({"same": constant_one_step_elbo is one_step_elbo}))
        """
    )
    assert report["same"]


def test_the_library_itself_imports_no_old_path():
    # The package, every link and the apps load without touching a deprecated stub.
    report = run_fresh(
        """
        import json, sys, warnings
        warnings.simplefilter("error", DeprecationWarning)
        import vsgd_bayes, vsgd_bayes.hyperparameters, vsgd_bayes.rules.vsgd
        import vsgd_bayes.rules.constant, vsgd_bayes.rules.kalman, vsgd_bayes.models.vsgd
        import vsgd_bayes.validation, vsgd_bayes.optax, vsgd_bayes.torch
        import vsgd_bayes.apps.validate, vsgd_bayes.apps.calibrate.cli
        from vsgd_bayes._moved import MOVED_MODULES
        print(json.dumps({"loaded": sorted(set(MOVED_MODULES) & set(sys.modules))}))
        """
    )
    assert report["loaded"] == []


def test_each_method_module_keeps_its_names_and_the_flat_interface_is_the_same_objects():
    assert hp.KALMAN_DEFAULTS is hp.kalman.DEFAULTS
    assert hp.CONSTANT_DEFAULTS is hp.constant.DEFAULTS
    assert hp.DEFAULTS is hp.vsgd.DEFAULTS
    assert hp.validate_kalman_hyperparameters is hp.kalman.validate_hyperparameters
    assert hp.constant_posterior_shape is hp.constant.posterior_shape


def test_an_argument_name_has_one_requirement_across_methods():
    # kappa is registered by Constant VSGD and by Kalman VSGD with the same requirement;
    # registering another one under a known name is refused (check of the check).
    assert hp.REQUIREMENTS["kappa"][1] == "in (0.5, 1]"
    with pytest.raises(RuntimeError, match="'kappa' is registered twice"):
        hp.register_requirements({"kappa": (lambda v: v > 0.0, "> 0")})
    with pytest.raises(RuntimeError, match="'init' is registered twice"):
        hp.register_requirements(choices={"init": ("paper",)})
    assert hp.REQUIREMENTS["kappa"][1] == "in (0.5, 1]" and hp.CHOICES["init"] == hp.INITS


def test_constant_vsgd_has_its_own_validation_with_the_shared_messages():
    hp.validate_constant_hyperparameters(**hp.CONSTANT_DEFAULTS)
    with pytest.raises(ValueError, match=r"Invalid kappa: 0\.5 \(must be in \(0\.5, 1\]\)"):
        hp.validate_constant_hyperparameters(kappa=0.5)
    with pytest.raises(TypeError, match="kappa1"):
        hp.validate_constant_hyperparameters(kappa1=0.8)
