"""Config rules live with what they describe: the generic config modules name no task family or method, a
family's or method's own rule is one line from its ``check_config``, and no module imports another's private
names (re-export shims included)."""

import ast
import re
from pathlib import Path

import pytest

from metarl.registry import METHODS
from train.config import load_config
from train.errors import ConfigError
from train.tasks import TASKS

ROOT = Path(__file__).resolve().parent.parent


def test_generic_config_code_names_no_task_or_method():
    names = sorted({*TASKS, *METHODS, "atari", "omniglot", "tiered", "maze", "sine", "warp-leap", "game"})
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")s?\b", re.IGNORECASE)
    for path in ("train/config_checks.py", "train/config_usage.py"):
        found = pattern.findall((ROOT / path).read_text())
        assert not found, (path, found)


def test_no_module_imports_another_modules_private_names():
    """``from X import _name`` nowhere in the package or the tests (a shared helper gets a public name)."""
    found = []
    for folder in ("metarl", "train", "agents", "envs", "tests", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    found += [f"{path.relative_to(ROOT)}:{node.lineno} {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found


def test_a_methods_own_rule_refuses_in_one_line():
    with pytest.raises(ConfigError, match="'maml.outer_loss' held_out needs tasks with held-out batches"):
        load_config(ROOT / "configs" / "sine_maml.yaml", ["maml.outer_loss=held_out"])
    load_config(ROOT / "configs" / "omniglot_dev_maml.yaml", ["maml.outer_loss=held_out"])      # Omniglot has them


def test_a_task_familys_own_rules_refuse_in_one_line():
    pytest.importorskip("envpool")
    atari = ROOT / "configs" / "atari_leap.yaml"
    with pytest.raises(ConfigError, match="'atari.train_games' is empty"):
        load_config(atari, ["atari.train_games=[]"])
    with pytest.raises(ConfigError, match="finetune with meta.head: learned needs one head shape .* atari.heads: max"):
        load_config(atari, ["method=finetune", "meta.head=learned"])
    load_config(atari, ["method=finetune", "meta.head=learned", "atari.heads=max"])
