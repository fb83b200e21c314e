"""Process-level settings (train/runtime.py): OpenMP's idle spin is shortened before torch loads, never after,
and never over the user's own setting."""

import os
import subprocess
import sys
from pathlib import Path

from train.runtime import SHORT_OPENMP_SPIN, short_openmp_spin

ROOT = Path(__file__).resolve().parent.parent

# What the `metarl` command does first, then whether libgomp (loaded with torch) saw the setting.
SCRIPT = """
import os, sys
from train.cli import main
code = main(["bench", "no-such-benchmark"])          # a command that fails early: exit 2, nothing run
import torch
print(code, "torch" in sys.modules, os.environ.get("GOMP_SPINCOUNT"))
"""


def run_script(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"} | env_extra
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_the_command_shortens_the_spin_before_torch_loads():
    assert run_script({}) == ["2", "True", SHORT_OPENMP_SPIN]


def test_the_users_setting_wins():
    assert run_script({"GOMP_SPINCOUNT": "77"}) == ["2", "True", "77"]


def test_too_late_once_torch_is_loaded(monkeypatch):
    import torch  # noqa: F401  (already loaded by the test session; libgomp has read its settings)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert short_openmp_spin() is False
    assert "GOMP_SPINCOUNT" not in os.environ
