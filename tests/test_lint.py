"""The one lint configuration (``[tool.ruff]`` in pyproject.toml) holds for the whole tree."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    # The test extra installs ruff into the environment that runs the tests.
    executable = pathlib.Path(sys.executable).with_name("ruff")
    if executable.exists():
        return [str(executable)]
    found = shutil.which("ruff")
    assert found, "ruff is not installed: pip install -e '.[test]'"
    return [found]


def test_ruff_check_passes():
    result = subprocess.run(
        [*_ruff(), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_flags_a_violation(tmp_path):
    # Check of the check: the configuration is read and catches an old-style annotation.
    bad = tmp_path / "bad.py"
    bad.write_text("from typing import List\n\n\ndef f(x: List[int]) -> None:\n    pass\n")
    result = subprocess.run(
        [*_ruff(), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(bad)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "UP006" in result.stdout, result.stdout + result.stderr
