"""`latentmill --version` prints the package version, without a subcommand and without loading Ray or torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from latentmill.jobs import cli
from latentmill.version import __version__

ROOT = Path(__file__).resolve().parents[2]


def test_version_flag_prints_the_version_and_exits_0(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"latentmill {__version__}"


def test_version_module_matches_pyproject():
    (declared,) = re.findall(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert __version__ == declared


def test_version_answers_without_heavy_imports():
    code = ("import sys; from latentmill.jobs import cli\n"
            "try:\n    cli.main(['--version'])\nexcept SystemExit as exc:\n    code = exc.code\n"
            "heavy = [m for m in ('ray', 'torch', 'diffusers') if m in sys.modules]\n"
            "print('HEAVY', heavy, code)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert f"latentmill {__version__}" in result.stdout
    assert "HEAVY [] 0" in result.stdout, result.stdout + result.stderr
