"""The derivations stay true and stay attached to the code.

* every ``check_*`` function of ``derivations/checks/*.py`` passes (sympy / mpmath algebra, and
  numerical comparisons of the derived formulas with ``vsgd_bayes.rules.vsgd`` / ``.constant``);
* every equation label cited in ``vsgd_bayes/rules/*.py`` and the torch
  paths (single-tensor ports, ``_foreach.py``, the C++ and Triton kernels) is defined, once,
  in ``derivations/*.md``, and every ``(eq:...)`` reference in the notes is defined; the
  per-step scalars of the fast paths are named alike in Python, C++ and Triton;
* every code name, state field and location in the notation table of ``derivations/README.md``
  exists in the package, and the authors' names in it match the loader of the golden data;
* the numbers quoted in ``05_first_step.md`` are reproduced by its script (a check in
  ``first_step.py``, run below with the others);
* every status label in the notes uses the vocabulary that ``derivations/README.md`` defines.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DERIVATIONS = ROOT / "derivations"
CHECKS_DIR = DERIVATIONS / "checks"
PACKAGE = ROOT / "vsgd_bayes"
CHECK_SCRIPTS = sorted(CHECKS_DIR.glob("*.py"))


def _load(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(f"derivation_checks_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _all_checks():
    cases = []
    for path in CHECK_SCRIPTS:
        module = _load(path)
        functions = [
            value
            for name, value in vars(module).items()
            if name.startswith("check_") and inspect.isfunction(value)
        ]
        for function in functions:
            cases.append(pytest.param(function, id=f"{path.stem}.{function.__name__}"))
    return cases


CHECKS = _all_checks()


def test_every_script_has_checks_and_lists_them_all():
    # A check_* function left out of a script's CHECKS list would be skipped by its __main__.
    assert len(CHECK_SCRIPTS) >= 7
    for path in CHECK_SCRIPTS:
        module = _load(path)
        defined = {n for n, v in vars(module).items() if n.startswith("check_") and callable(v)}
        assert defined, path.name
        assert {f.__name__ for f in module.CHECKS} == defined, path.name


@pytest.mark.parametrize("check", CHECKS)
def test_check(check):
    check()


def _documents():
    return {path.name: path.read_text() for path in sorted(DERIVATIONS.glob("*.md"))}


def _defined_labels():
    definitions = {}
    for name, text in _documents().items():
        for label in re.findall(r"\\tag\{eq:([a-z0-9-]+)\}", text):
            definitions.setdefault(label, []).append(name)
    return definitions


def test_equation_labels_are_defined_once():
    definitions = _defined_labels()
    assert len(definitions) >= 30
    duplicated = {label: files for label, files in definitions.items() if len(files) > 1}
    assert not duplicated


def test_references_in_the_notes_are_defined():
    definitions = _defined_labels()
    for name, text in _documents().items():
        for label in re.findall(r"\(eq:([a-z0-9-]+)\)", text):
            assert label in definitions, f"{name} cites (eq:{label}), which no note defines"


#: Each file that cites derivation labels, and the labels it must cite (at least).
_FAST = {"fast-gain", "fast-mean", "fast-variance", "fast-residuals", "fast-targets"}
CITING_FILES = {
    "rules/vsgd.py": {
        "local-variance",
        "local-mean",
        "global-targets",
        "svi-blend",
        "parameter-step",
    },
    "rules/constant.py": {"constant-mean", "constant-variance", "constant-target"},
    "torch/_single_tensor.py": {
        "local-variance",
        "local-mean",
        "global-targets",
        "svi-blend",
        "parameter-step",
    },
    "torch/_constant_single_tensor.py": {
        "constant-mean",
        "constant-variance",
        "constant-target",
        "svi-blend",
        "parameter-step",
    },
    "torch/_constant_foreach.py": {
        "constant-mean",
        "constant-variance",
        "constant-target",
        "svi-blend",
        "parameter-step",
    },
    "torch/_foreach.py": _FAST | {"fast-scaled", "svi-blend", "parameter-step"},
    "torch/csrc/vsgd_cpu.cpp": _FAST | {"svi-blend", "parameter-step"},
    "torch/_triton.py": _FAST | {"svi-blend", "parameter-step"},
    "rules/kalman.py": {
        "kalman-step-variance",
        "kalman-steady-gain",
        "kalman-innovation",
        "kalman-ratio-step",
        "kalman-mean",
        "kalman-sensitivity",
        "kalman-innovation-variance",
        "kalman-variances",
        "kalman-predict",
        "kalman-update",
        "kalman-likelihood",
        "parameter-step",
    },
    "torch/_kalman_single_tensor.py": {
        "kalman-step-variance",
        "kalman-steady-gain",
        "kalman-innovation",
        "kalman-ratio-step",
        "kalman-mean",
        "kalman-sensitivity",
        "kalman-innovation-variance",
        "kalman-variances",
        "parameter-step",
    },
    "rules/factored.py": {
        "factored-local", "factored-targets", "factored-gauge", "svi-blend", "parameter-step",
    },
    "torch/_factored_single_tensor.py": {
        "factored-local", "factored-targets", "factored-gauge", "svi-blend", "parameter-step",
    },
    "torch/_factored_foreach.py": {
        "factored-local", "factored-targets", "factored-gauge", "svi-blend", "parameter-step",
    },
    "torch/_schedule_free.py": {
        "schedule-free-z", "schedule-free-x", "schedule-free-y", "schedule-free-eval",
    },
    "rules/curvature.py": {
        "curvature-predict",
        "curvature-innovation",
        "curvature-update",
        "curvature-noise-variance",
        "curvature-sensitivity",
        "curvature-ratio-score",
        "curvature-ratio-step",
        "curvature-step-variance",
        "curvature-trust-region",
        "curvature-likelihood",
        "parameter-step",
    },
    "models/curvature.py": {"curvature-model"},
    "rules/kronecker.py": {
        "kronecker-rotate",
        "kronecker-local",
        "kronecker-step",
        "kronecker-moments",
        "kronecker-basis",
        "kronecker-rotate-state",
    },
    "models/kronecker.py": {"kronecker-model"},
    "torch/csrc/curvature_cpu.cpp": {
        "curvature-predict",
        "curvature-innovation",
        "curvature-update",
        "curvature-noise-variance",
        "curvature-sensitivity",
        "curvature-ratio-score",
        "curvature-ratio-step",
        "curvature-step-variance",
        "curvature-trust-region",
        "parameter-step",
    },
    "validation/curvature.py": {
        "curvature-likelihood", "curvature-sensitivity", "curvature-ratio-score",
    },
    "torch/_kronecker_single_tensor.py": {
        "kronecker-rotate", "kronecker-local", "kronecker-step", "kronecker-moments",
        "kronecker-basis", "kronecker-rotate-state",
    },
    "torch/_kalman_foreach.py": {
        "kalman-step-variance",
        "kalman-steady-gain",
        "kalman-innovation",
        "kalman-ratio-score",
        "kalman-ratio-step",
        "kalman-mean",
        "kalman-sensitivity",
        "kalman-innovation-variance",
        "kalman-variances",
        "parameter-step",
    },
}


@pytest.mark.parametrize("module", list(CITING_FILES))
def test_labels_cited_by_the_code_exist(module):
    source = (PACKAGE / module).read_text()
    cited = set(re.findall(r"\[([a-z]+(?:-[a-z]+)+)\]", source))
    assert CITING_FILES[module] <= cited, sorted(CITING_FILES[module] - cited)
    missing = cited - set(_defined_labels())
    assert not missing, f"{module} cites labels no derivation defines: {sorted(missing)}"


def test_label_check_reports_an_undefined_label():
    # check of the check: a made-up label is not among the defined ones
    assert "fast-made-up" not in _defined_labels()
    assert "fast-gain" in _defined_labels()


def _step_constant_fields():
    # the NamedTuple's field names, read from the source (importing torch is not needed)
    source = (PACKAGE / "torch" / "_foreach.py").read_text()
    body = source.split("class StepConstants(NamedTuple):", 1)[1].split("\n\n\n", 1)[0]
    return re.findall(r"^    ([a-z_]+): float", body, flags=re.M)


def _mirrors(fields, cpp, triton):
    """Whether the C++ struct, its filling from the flat doubles and the Triton loads name the
    fields of StepConstants in its order."""
    struct = cpp.split("struct StepConstants {", 1)[1].split("};", 1)[0]
    numbered = [(name, str(i)) for i, name in enumerate(fields)]
    return (
        re.findall(r"double ([a-z_]+);", struct) == fields
        and re.findall(r"c\.([a-z_]+) = values\[(\d)\];", cpp) == numbered
        and re.findall(r"([a-z_]+) = tl\.load\(c \+ (\d)\)", triton) == numbered
    )


def test_step_constants_are_mirrored_by_the_cpp_struct_and_the_triton_loads():
    fields = _step_constant_fields()
    assert len(fields) == 7 and fields[0] == "inverse_shape"
    cpp = (PACKAGE / "torch" / "csrc" / "vsgd_cpu.cpp").read_text()
    triton = (PACKAGE / "torch" / "_triton.py").read_text()
    assert _mirrors(fields, cpp, triton)
    # check of the check: two fields swapped in the Python order are reported
    swapped = [fields[1], fields[0], *fields[2:]]
    assert not _mirrors(swapped, cpp, triton)


def test_derivation_files_named_in_the_package_exist():
    for path in PACKAGE.rglob("*.py"):
        for name in re.findall(r"derivations/([0-9A-Za-z_]+\.md)", path.read_text()):
            assert (DERIVATIONS / name).is_file(), f"{path.name} refers to derivations/{name}"


def _notation_rows():
    text = (DERIVATIONS / "README.md").read_text()
    section = text.split("## Notation", 1)[1]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 6 and not set(cells[0]) <= set("-") and cells[0] != "symbol":
            rows.append(
                dict(zip(("symbol", "meaning", "code", "state", "where", "authors"), cells))
            )
    return rows


def _names(cell):
    return re.findall(r"`([^`]+)`", cell)


def _package_identifiers():
    identifiers = set()
    for path in PACKAGE.rglob("*.py"):
        identifiers.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", path.read_text()))
    return identifiers


def test_notation_table_covers_the_symbols():
    code_names = {name for row in _notation_rows() for name in _names(row["code"])}
    required = {
        "params",
        "lr",
        "gradient",
        "gradient_mean",
        "gradient_variance",
        "prior_shape",
        "posterior_shape",
        "drift_rate",
        "noise_rate",
        "prior_strength",
        "variance_ratio",
        "kappa1",
        "kappa2",
        "step_sizes",
        "weight_decay",
        "eps",
        "gain",
        "momentum",
    }
    assert required <= code_names, required - code_names
    from vsgd_bayes import hyperparameters

    hyperparameter_names = set(hyperparameters.DEFAULTS) - {"init"}
    assert hyperparameter_names <= code_names, hyperparameter_names - code_names
    authors = {name for row in _notation_rows() for name in _names(row["authors"])}
    assert {"ghattg", "ps", "tau1", "tau2", "mug", "bg", "bhg", "pa2", "pbg2", "pbhg2"} <= authors


def test_notation_code_names_exist_in_the_package():
    identifiers = _package_identifiers()
    for row in _notation_rows():
        for name in _names(row["code"]):
            assert name in identifiers, f"{row['symbol']}: `{name}` is not a name in vsgd_bayes"


def test_notation_state_fields_are_state_fields():
    from vsgd_bayes.rules import constant as constant_rule
    from vsgd_bayes.rules import factored as factored_rule
    from vsgd_bayes.rules import kalman as kalman_rule
    from vsgd_bayes.rules import kronecker as kronecker_rule
    from vsgd_bayes.rules import vsgd as rule

    fields = (
        set(rule.VSGDState._fields)
        | set(constant_rule.ConstantVSGDState._fields)
        | set(kalman_rule.KalmanVSGDState._fields)
        | set(factored_rule.FactoredVSGDState._fields)
        | set(kronecker_rule.KroneckerState._fields)
    )
    listed = {name for row in _notation_rows() for name in _names(row["state"])}
    assert listed == fields  # every field documented, nothing else


def test_notation_locations_exist():
    for row in _notation_rows():
        for location in _names(row["where"]):
            module_name, attribute = location.rsplit(".", 1)
            module = importlib.import_module(module_name)
            assert hasattr(module, attribute), f"{row['symbol']}: {location} does not exist"


def test_notation_authors_names_match_the_golden_loader_and_the_transcription():
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from golden import ARGUMENT_NAMES
    finally:
        sys.path.remove(str(ROOT / "tests"))
    transcription = _load(CHECKS_DIR / "first_step.py")
    transcribed = set(
        re.findall(r"[A-Za-z_][A-Za-z0-9_]*", inspect.getsource(transcription.reference_code_step))
    )
    for row in _notation_rows():
        authors, code = _names(row["authors"]), _names(row["code"])
        for name in authors:
            if name in ARGUMENT_NAMES:
                # The authors' hyperparameter name maps to this row's project name.
                assert ARGUMENT_NAMES[name] in code, (name, code)
            else:
                # A name of their update: the transcription in first_step.py uses it.
                assert name in transcribed or name == "step", name


def _label_vocabulary():
    text = (DERIVATIONS / "README.md").read_text()
    section = text.split("## Status markers", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^- \*\*\[(.+?)\]\*\*", section, flags=re.MULTILINE)


def _labels(text):
    labels = re.findall(r"\*\*\[(.+?)\]\*\*", text, re.DOTALL)
    return [" ".join(label.split()) for label in labels]


def test_status_labels_use_the_documented_vocabulary():
    vocabulary = _label_vocabulary()
    assert "reconstructed here" in vocabulary and "derived here" in vocabulary  # parser works
    # The longest matching head first, so the full transcription label is recognised as such.
    heads = sorted(vocabulary, key=len, reverse=True)
    used = set()
    for name, text in _documents().items():
        if name == "README.md":
            continue
        labels = _labels(text)
        assert labels, name
        for label in labels:
            head = next((h for h in heads if label.startswith(h)), None)
            assert head is not None, f"{name}: label [{label}] is not in the README's list"
            used.add(head)
    # "confirmed (paper)" was used for a transcription; nothing may claim the paper's text.
    assert not any("confirmed (paper)" in text for text in _documents().values())
    # Check of the check: an unknown label is not matched by any head.
    assert not any("confirmed (paper)".startswith(h) for h in heads)
    assert len(used) >= 5  # the vocabulary is in use, not just listed
