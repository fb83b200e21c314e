"""`metarl bench` lists exactly the benchmarks: train/benchmarks' modules with a ``run(argv)``, not helpers."""

import importlib
import pkgutil

from train import benchmarks
from train.benchmarks import BENCHMARKS


def test_benchmarks_lists_every_benchmark_module_and_no_helper():
    modules = {m.name for m in pkgutil.iter_modules(benchmarks.__path__)}
    listed = {module.rsplit(".", 1)[1] for module, _ in BENCHMARKS.values()}
    assert listed == {m for m in modules if not m.startswith("_")}
    for name, (module, description) in BENCHMARKS.items():
        assert name == module.rsplit(".", 1)[1].replace("_", "-") and description
        assert callable(importlib.import_module(module).run)
