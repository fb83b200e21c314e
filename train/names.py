"""How every output of a run names the initialisations it compares — the run's closing table, eval_atari.md and
.png, `metarl plot`'s legend, `metarl report`: "random init", and the meta-learned one after its method ("Leap
init", "Reptile init", ...). eval.json and the evaluation's files keep the keys ``random_init`` and ``meta_init``.
"""

from __future__ import annotations

# the meta-learned initialisation's name, by method
METHOD_NAMES = {"leap": "Leap", "reptile": "Reptile", "finetune": "pretrained", "no_pretraining": "fixed random",
                "fomaml": "FOMAML", "maml": "MAML"}
RANDOM_INIT = "random init"


def init_labels(method: str) -> dict[str, str]:
    """{``random_init``: "random init", ``meta_init``: "<Method> init"} for a run of ``method``."""
    return {"random_init": RANDOM_INIT, "meta_init": f"{METHOD_NAMES.get(method, method)} init"}


def init_names(methods: dict[str, str]) -> dict[str, str]:
    """Display names of several runs' meta-learned initialisations, ``{config name: method}`` → ``{config name:
    name}``: "<Method> init", followed by the config name where two configs share a method ("pretrained init
    (atari_transfer2_control)"); and ``random_init`` → "random init"."""
    label = {name: init_labels(method)["meta_init"] for name, method in methods.items()}
    shared = {v for v in label.values() if list(label.values()).count(v) > 1}
    out = {name: f"{v} ({name})" if v in shared else v for name, v in label.items()}
    return {**out, "random_init": RANDOM_INIT}


# Where an Atari evaluation of a split puts its results (train/tasks/atari_eval.py) and where `metarl report` reads
# them (train/report_data.py)
def result_name(split: str) -> str:
    """The result files' stem of a split: ``eval_atari`` (test: what `metarl report` reads by default) or
    ``eval_atari_<split>``, so that evaluating another split never replaces the test results."""
    return "eval_atari" if split == "test" else f"eval_atari_{split}"


def tb_prefix(split: str) -> str:
    """The TensorBoard runs of a split's evaluation: ``eval/<init>`` (test) or ``eval_<split>/<init>`` (each
    evaluation rewrites its runs from step 0, which would hide the other split's curves)."""
    return "eval" if split == "test" else f"eval_{split}"
