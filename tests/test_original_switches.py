"""The switches that reproduce the original WarpGrad / Leap Omniglot code's choices (docs/protocols.md §1) and
the quick-protocol configs that turn them on (configs/omniglot_quick_*.yaml): the output-head policy per
method, Warp-Leap's replay of every trajectory point, MAML's outer loss on every held-out image plus the last
inner loss, and evaluation with BatchNorm batch statistics. Real Omniglot data, tiny models."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metarl import MAML
from train.config import load_config
from train.distributed import World
from train.errors import ConfigError
from train.seeding import step_generators
from train.tasks.omniglot import OmniglotAdapter
from train.tasks.omniglot_data import DEFAULT_CACHE_DIR, load_omniglot
from train import trainer

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "omniglot"
QUICK = ("leap", "warp_leap", "reptile", "finetune", "no_pretraining", "fomaml", "maml")
# The head policy of the WarpGrad code: its model re-draws the head before each task for Leap, Reptile, FOMAML
# and no pre-training; Warp-Leap copies its whole initialisation (head included) into the task learner, MAML
# never resets it, and fine-tuning's heads are one shared module carried from task to task.
HEAD = {"leap": "reset", "reptile": "reset", "fomaml": "reset", "no_pretraining": "reset",
        "warp_leap": "learned", "maml": "learned", "finetune": "learned"}
TINY = ["omniglot.filters=4", "run.progress=false"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    if not (DATA / "images_background.zip").is_file():
        pytest.skip(f"real Omniglot data not found at {DATA}")
    return load_omniglot(DATA, DEFAULT_CACHE_DIR)


def quick(method: str, *overrides: str):
    return load_config(ROOT / "configs" / f"omniglot_quick_{method}.yaml", [*TINY, *overrides])


def build(cfg, data):
    return trainer.setup(cfg, OmniglotAdapter(cfg.task_config, seed=cfg.seed, data=data))


def one_task(cfg, adapter, meta, split: str = "train"):
    rng, generator = step_generators(cfg.seed, 0, 1)
    task = adapter.sample_tasks(split, 1, rng)[0]
    return task, trainer.task_model(adapter, meta, task, generator, cfg.meta.head)


# ------------------------------------------------------------------------------------------------
# the configs


def test_quick_configs_switch_on_the_original_choices():
    for method in QUICK:
        path = ROOT / "configs" / f"omniglot_quick_{method}.yaml"
        cfg = load_config(path)
        omni = cfg.task_config
        assert cfg.name == f"omniglot_quick_{method}", method
        # the WarpGrad README's quick setting
        assert (omni.filters, omni.batch_size, cfg.meta.meta_batch, cfg.inner.steps, cfg.eval.steps) == \
            (64, 20, 5, 100, 100), method
        assert cfg.meta.steps == (1 if method == "no_pretraining" else 100), method
        assert (cfg.eval.periodic_split, cfg.eval.split, cfg.eval.tasks) == ("val", "test", 10), method
        assert cfg.eval.every == (0 if method == "no_pretraining" else 10), method     # a fixed init: flat curve
        assert (cfg.inner.optimizer, cfg.inner.lr) == ("sgd", 0.1), method
        # the WarpGrad code's outer lrs, but Reptile's and FOMAML's (chosen on test there) are chosen on validation
        outer = {"maml": 0.5, "reptile": 1.0, "fomaml": 1.0}.get(method, 0.1)
        assert (cfg.meta.optimizer.name, cfg.meta.optimizer.lr) == ("sgd", outer), method
        assert cfg.meta.head == HEAD[method], method
        assert omni.batch_norm_eval == ("batch" if method == "maml" else "running"), method
        assert "flennerhag/warpgrad @ d9ef72a" in path.read_text().split("include:")[0], method   # the header
    maml = load_config(ROOT / "configs" / "omniglot_quick_maml.yaml")
    assert (maml.maml.inner_lr, maml.maml.steps, maml.maml.first_order, maml.maml.outer_loss) == \
        (0.1, 5, False, "held_out")
    warp = load_config(ROOT / "configs" / "omniglot_quick_warp_leap.yaml")
    wg = warp.method_config
    assert (wg.algorithm, wg.init_objective, wg.stride, wg.eta, wg.final_point, wg.init_schedule) == \
        ("offline", "leap", 1, 1, False, "meta_batch")
    assert warp.leap.loss is False and warp.leap.p == 1 and warp.task_config.warp == "conv"


def test_paper_protocol_warp_leap_original_is_the_quick_one_at_the_paper_scale():
    paper = load_config(ROOT / "configs" / "omniglot_warp_leap_original.yaml")
    quick = load_config(ROOT / "configs" / "omniglot_quick_warp_leap.yaml")
    leap = load_config(ROOT / "configs" / "omniglot_leap.yaml")
    assert paper.name == "omniglot_warp_leap_original" and paper.method == "warpgrad"
    # every original choice as the quick config
    assert paper.method_config == quick.method_config and paper.leap == quick.leap
    assert (paper.meta.head, paper.meta.optimizer, paper.task_config.warp) == \
        (quick.meta.head, quick.meta.optimizer, quick.task_config.warp)
    # the scale, data and evaluation of the paper protocol, as the Leap run it compares with
    assert (paper.meta.meta_batch, paper.meta.steps, paper.inner, paper.eval, paper.run) == \
        (leap.meta.meta_batch, leap.meta.steps, leap.inner, leap.eval, leap.run)
    assert paper.task_config == dataclasses.replace(leap.task_config, warp="conv")


def test_bad_switch_values_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="'maml.outer_loss' must be query_batch or held_out"):
        quick("maml", "maml.outer_loss=all")
    with pytest.raises(ConfigError, match="batch_norm_eval must be running, refit or batch"):
        quick("maml", "omniglot.batch_norm_eval=batches")
    with pytest.raises(ConfigError, match="'maml.outer_loss' held_out needs tasks with held-out batches .* task sine"):
        load_config(ROOT / "configs" / "sine_maml.yaml", ["maml.outer_loss=held_out"])
    with pytest.raises(ValueError, match="outer_loss must be one of query_batch, held_out"):
        MAML(torch.nn.Linear(2, 2), outer_loss="all")


# ------------------------------------------------------------------------------------------------
# 1. the output head per method


@pytest.mark.parametrize("method", QUICK)
def test_every_task_starts_from_the_documented_head(method, data, monkeypatch):
    """Every task the trainer builds — meta-training and evaluation — starts from a fresh head (reset: not
    θ⁰'s, different between tasks) or from θ⁰'s head (learned); the trunk is θ⁰'s either way."""
    small = ["meta.steps=1", "meta.meta_batch=3", "inner.steps=1", "eval.steps=1", "eval.tasks=2"]
    cfg = quick(method, *small, *(["maml.steps=1"] if method == "maml" else []))
    adapter, meta = build(cfg, data)
    seen = []
    original = trainer.task_model

    def recording(adapter, meta, task, generator, head):
        model = original(adapter, meta, task, generator, head)
        state = model.state_dict()
        seen.append({"head": state["head.weight"].clone(), "init_head": meta.init_state["head.weight"].clone(),
                     "trunk": state["blocks.0.conv.weight"].clone(),
                     "init_trunk": meta.init_state["blocks.0.conv.weight"].clone()})
        return model

    monkeypatch.setattr(trainer, "task_model", recording)
    trainer.episodic_unit(cfg, adapter, meta, World(), 0)
    trainer.evaluate(cfg, adapter, meta, "val")
    assert len(seen) == 3 + 2
    for s in seen:
        assert torch.equal(s["trunk"], s["init_trunk"])
        assert torch.equal(s["head"], s["init_head"]) == (HEAD[method] == "learned")
    if HEAD[method] == "reset":
        heads = [s["head"] for s in seen]
        assert all(not torch.equal(a, b) for i, a in enumerate(heads) for b in heads[i + 1:])


@pytest.mark.parametrize("method", ("maml", "warp_leap"))
def test_learned_head_receives_the_meta_gradient(method, data):
    """Under meta.head learned the head is part of θ⁰ and moves with the meta-step (MAML, Warp-Leap);
    under reset it is not meta-learned at all."""
    small = ["meta.meta_batch=1", "inner.steps=2", *(["maml.steps=2"] if method == "maml" else [])]
    for head in ("learned", "reset"):
        cfg = quick(method, *small, f"meta.head={head}")
        adapter, meta = build(cfg, data)
        before = meta.init_state["head.weight"].clone()
        trainer.episodic_unit(cfg, adapter, meta, World(), 0)
        learned = any(n.startswith("head.") for n in meta.names)
        assert learned == (head == "learned")
        assert (not torch.equal(meta.init_state["head.weight"], before)) == (head == "learned")


# ------------------------------------------------------------------------------------------------
# 2. Warp-Leap: every trajectory point


def replayed_points(cfg, data, monkeypatch):
    adapter, meta = build(cfg, data)
    seen = []
    replay = meta._replay_value

    def recording(traj, point):
        seen.append((id(traj), point.index))
        return replay(traj, point)

    monkeypatch.setattr(meta, "_replay_value", recording)
    trainer.episodic_unit(cfg, adapter, meta, World(), 0)
    trajectories = sorted({t for t, _ in seen})
    return meta, {t: sorted(k for u, k in seen if u == t) for t in trajectories}


@pytest.mark.parametrize("stride, final_point, steps, expected", [
    (1, "false", 5, [0, 1, 2, 3, 4]),          # the original: θ_0 … θ_{K−1}, each once
    (1, "true", 5, [0, 1, 2, 3, 4, 5]),        # and θ_K
    (2, "false", 5, [0, 2, 4]),
    (3, "true", 7, [0, 3, 6, 7]),
])
def test_warp_leap_replays_every_stride_th_point_of_every_task(stride, final_point, steps, expected, data,
                                                              monkeypatch):
    tasks = 2
    cfg = quick("warp_leap", f"meta.meta_batch={tasks}", f"inner.steps={steps}", f"warpgrad.stride={stride}",
                f"warpgrad.final_point={final_point}")
    meta, points = replayed_points(cfg, data, monkeypatch)
    assert len(points) == tasks and all(p == expected for p in points.values())
    assert meta.warp_updates == tasks * len(expected)       # eta 1: one φ step per replayed point


# ------------------------------------------------------------------------------------------------
# 3. MAML's outer loss and BatchNorm as the original


def test_held_out_batches_are_every_held_out_image_once(data):
    cfg = quick("maml")
    adapter, meta = build(cfg, data)
    task, _ = one_task(cfg, adapter, meta)
    x, y = task.batch("test")
    batches = task.held_out_batches()
    assert [len(b[1]) for b in batches] == [20] * 5 and len(y) == 100
    xs, ys = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    # a permutation of the test batch: every image exactly once (matched by content)
    match = (xs.flatten(1)[:, None, :] == x.flatten(1)[None, :, :]).all(-1)
    assert match.sum(1).eq(1).all() and match.sum(0).eq(1).all()
    assert torch.equal(ys, y[match.float().argmax(1)])
    assert not torch.equal(ys, y)                            # mixed classes per batch, not label order
    again = task.held_out_batches()
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))


def maml_gradient(cfg, adapter, meta, task, model):
    meta.run_task(adapter, task, model, None, cfg.inner.steps)
    grads = meta.meta_gradient()
    meta.meta_step()
    return dict(zip(meta.names, grads))


def test_maml_held_out_outer_loss_is_every_held_out_image_plus_the_last_inner_loss(data):
    """∇_θ⁰ of (L(θ_{K−1}; batch K) + Σ_b L_b(θ_K)) / B over the B held-out batches, written out directly;
    different from the query-batch outer loss and from the held-out loss without the last inner loss."""
    steps = 2
    cfg = quick("maml", f"maml.steps={steps}")
    adapter, meta = build(cfg, data)
    task, model = one_task(cfg, adapter, meta)
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    reference = copy.deepcopy(model)
    got = maml_gradient(cfg, adapter, meta, task, model)

    # the same task from the start: the same training batches
    task.reset()
    start = {n: v.clone().requires_grad_(True) for n, v in theta0.items()}
    params = dict(start)
    for _ in range(steps):
        x, y = task.batch("train")
        last = F.cross_entropy(functional_call(reference, params, (x,)), y)
        grads = torch.autograd.grad(last, list(params.values()), create_graph=True)
        params = {n: p - 0.1 * g for (n, p), g in zip(params.items(), grads)}
    held = [F.cross_entropy(functional_call(reference, params, (x,)), y) for x, y in task.held_out_batches()]
    assert len(held) == 5 and sum(len(b[1]) for b in task.held_out_batches()) == 100
    with_last = torch.autograd.grad((last + sum(held)) / len(held), list(start.values()), retain_graph=True)
    without_last = torch.autograd.grad(sum(held) / len(held), list(start.values()))
    assert set(got) == set(start) and any(n.startswith("head.") for n in got)
    for n, a in zip(start, with_last):
        torch.testing.assert_close(got[n], a, rtol=1e-4, atol=1e-6)
    assert max(float((got[n] - b).abs().max()) for n, b in zip(start, without_last)) > 1e-4

    cfg_q = quick("maml", f"maml.steps={steps}", "maml.outer_loss=query_batch")
    adapter_q, meta_q = build(cfg_q, data)
    task_q, model_q = one_task(cfg_q, adapter_q, meta_q)
    query = maml_gradient(cfg_q, adapter_q, meta_q, task_q, model_q)
    assert max(float((got[n] - query[n]).abs().max()) for n in got) > 1e-4


def test_first_order_maml_with_held_out_outer_loss_runs(data):
    cfg = quick("maml", "maml.steps=2", "maml.first_order=true")
    adapter, meta = build(cfg, data)
    task, model = one_task(cfg, adapter, meta)
    grads = maml_gradient(cfg, adapter, meta, task, model)
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_batch_norm_eval_batch_scores_each_held_out_batch_with_its_own_statistics(data):
    cfg = quick("maml")
    adapter, meta = build(cfg, data)
    task, model = one_task(cfg, adapter, meta, "test")
    adapter.adapt(task, model, torch.optim.SGD(model.parameters(), lr=0.1), 3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    got = adapter.evaluate(task, model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())     # no side effect
    assert model.training

    direct = copy.deepcopy(model).train()        # train mode: every forward normalises with its batch
    losses, correct = [], 0
    with torch.no_grad():
        for x, y in task.held_out_batches():
            logits = direct(x)
            losses.append(float(F.cross_entropy(logits, y)))
            correct += int((logits.argmax(-1) == y).sum())
    assert got["test_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert got["test_accuracy"] == pytest.approx(correct / 100)

    adapter.config.batch_norm_eval = "running"
    running = adapter.evaluate(task, model)
    assert running["test_loss"] != pytest.approx(got["test_loss"], rel=1e-3)
