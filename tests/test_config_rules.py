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


def test_the_run_config_names_tasks_and_methods_only_as_its_defaults_and_shared_sections():
    """train/config.py's code (docstrings and comments aside) names a task family or method only as the defaults
    ``task: sine`` / ``method: leap`` and the shared ``leap:`` / ``maml:`` sections: the data folders a family
    reads and the keys it lets a resume change are the family's own (``TaskAdapter.data_keys``,
    ``resume_mutable``)."""
    names = sorted({*TASKS, *METHODS, "atari", "omniglot", "tiered", "maze", "sine", "warp-leap", "game"})
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")s?\b", re.IGNORECASE)
    tree = ast.parse((ROOT / "train" / "config.py").read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                  and ast.get_docstring(node, clean=False) is not None}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found |= {(node.value, m) for m in pattern.findall(node.value)}
        elif isinstance(node, (ast.Name, ast.Attribute)):
            name = node.id if isinstance(node, ast.Name) else node.attr
            found |= {(name, m) for m in pattern.findall(name.replace("_", " "))}
    assert found == {("sine", "sine"), ("leap", "leap"), ("maml", "maml")}, found


def test_a_resume_may_change_only_its_own_familys_data_keys():
    """The data and cache folders a resume may move are the run's own family's: a sine run's refusal lists no
    Omniglot key, an Omniglot run's lists its root and cache."""
    from train.config import check_resume_overrides
    from train.tasks import adapter_class
    assert adapter_class("omniglot").data_keys == ("root",) and adapter_class("tiered").data_keys == ("root",)
    assert adapter_class("sine").data_keys == () and adapter_class("sine").resume_mutable == ()
    sine = load_config(ROOT / "configs" / "sine_leap.yaml")
    with pytest.raises(ConfigError, match="on resume") as refused:
        check_resume_overrides(sine, load_config(ROOT / "configs" / "sine_leap.yaml", ["inner.lr=0.5"]))
    assert "omniglot" not in str(refused.value) and "tiered" not in str(refused.value)
    omniglot = ROOT / "configs" / "omniglot_quick_leap.yaml"
    with pytest.raises(ConfigError, match="omniglot.root, omniglot.cache_dir; start a new run"):
        check_resume_overrides(load_config(omniglot), load_config(omniglot, ["omniglot.filters=32"]))


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
