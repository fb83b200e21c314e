"""The Omniglot benchmarks' figures and the bf16 path (``omniglot.precision``).

- `omniglot-meta-step`: its default is the training configuration, its last-line keys are there, and its
  analytic FLOP count equals what torch.utils.flop_counter counts, for one step and for a whole meta-step
  of the trainer's own code;
- bf16: convs and linear layers in bf16, BatchNorm, logits, loss, parameters and gradients in fp32;
- `omniglot-bf16-cosine`: on real tasks, bf16's Leap meta-gradient is closer to fp32's on the same batch
  order than fp32's is to itself on another order (no timing is asserted anywhere).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from train.benchmarks import omniglot_bf16_cosine as cosine_bench
from train.benchmarks import omniglot_meta_step as bench
from train.config import build_config, load_config
from train.errors import ConfigError, UserError
from train.tasks.omniglot import OmniConv, OmniglotAdapter

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "omniglot"
TINY = ["--data", "synthetic", "--tasks", "1", "--steps", "2", "--rounds", "1", "--filters", "8",
        "--gemm-size", "256", "--gemm-reps", "2"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pool():
    return bench.synthetic_data(alphabets=32)       # > num_pretrain + num_test of the paper config


def _run(module, argv):
    threads = torch.get_num_threads()
    try:
        return module.run(argv)
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------
# omniglot-meta-step


@pytest.mark.parametrize("filters,batch", [(64, 20), (8, 5)])
def test_flops_of_one_step_match_the_flop_counter(filters, batch):
    f = bench.omniconv_flops(filters, batch, ways=20)
    model = OmniConv(20, filters).to(memory_format=torch.channels_last)
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 20, (batch,))
    with FlopCounterMode(display=False) as forward:
        loss = F.cross_entropy(model(x), y)
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    assert f["forward"] == forward.get_total_flops() and f["backward"] == backward.get_total_flops()
    if (filters, batch) == (64, 20):            # the estimate: ≈ 1.1 GFLOP per inner step
        assert (f["forward"] + f["backward"]) / 1e9 == pytest.approx(1.16, abs=0.01)


def test_flops_of_a_meta_step_match_the_trainer(pool):
    """The whole of trainer.episodic_unit (2 tasks × 3 Leap-watched steps and the closing forwards) counts
    what meta_step_flops says, apart from the augmentation's affine-grid bmm."""
    from train.distributed import World
    from train.trainer import episodic_unit, setup
    cfg = load_config(bench.CONFIG, ["inner.steps=3", "meta.meta_batch=2", "omniglot.filters=8", "eval.every=0"])
    adapter, meta = setup(cfg, OmniglotAdapter(cfg.task_config, seed=cfg.seed, data=pool))
    with FlopCounterMode(display=False) as counter:
        episodic_unit(cfg, adapter, meta, World(), 0)
    counts = counter.get_flop_counts()["Global"]
    counted = sum(v for op, v in counts.items() if str(op) != "aten.bmm")
    assert counted == bench.meta_step_flops(2, 3, filters=8, batch=20, ways=20)


def test_default_is_the_training_configuration():
    """No option: the config `metarl train configs/omniglot_leap.yaml` runs, only the meta-batch fraction
    and the evaluation switched off; the adapter builds θ⁰ in channels_last, in fp32."""
    benched, adapter, meta = bench.build(bench._parse(["--data", "synthetic", "--tasks", "2", "--steps", "3"]))
    expected = dataclasses.asdict(load_config(bench.CONFIG))
    expected["meta"]["meta_batch"], expected["inner"]["steps"] = 2, 3
    expected["eval"]["every"], expected["run"]["progress"] = 0, False
    assert dataclasses.asdict(benched) == expected
    model = adapter.make_model(torch.Generator().manual_seed(0))
    assert model.blocks[1].conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.precision == "fp32"


def test_meta_step_bench_figures():
    out = _run(bench, TINY)
    for key in ("seconds_per_meta_step", "cpu_seconds_per_meta_step", "gemm_peak_gflops", "fraction_of_peak",
                "fraction_of_peak_cpu", "gflop_per_meta_step", "achieved_gflops_per_core", "extrapolated",
                "load_before", "load_after"):
        assert key in out, key
    assert out["channels_last"] and out["mallopt"] and out["precision"] == "fp32"
    assert out["extrapolated"] and out["extrapolation_factor"] == 1000.0          # 20 × 100 from the config
    assert out["gflop_per_meta_step"] == bench.meta_step_flops(20, 100, 8, 20, 20) / 1e9
    assert out["gemm_peak_gflops"] > 0 and out["fraction_of_peak"] > 0
    assert out["fraction_of_peak"] == pytest.approx(
        out["gflop_per_meta_step"] / out["seconds_per_meta_step"] / out["gemm_peak_gflops"])
    assert out["fraction_of_peak_cpu"] == pytest.approx(
        out["gflop_per_meta_step"] / out["cpu_seconds_per_meta_step"] / out["gemm_peak_gflops_cpu"])


def test_meta_step_bench_opt_outs():
    """--no-mallopt measures in a fresh interpreter; bf16 adds its own GEMM peak and is judged against it."""
    out = _run(bench, [*TINY, "--no-mallopt", "--no-channels-last", "--bf16"])
    assert not out["mallopt"] and not out["channels_last"] and out["precision"] == "bf16"
    assert out["seconds_per_meta_step"] > 0 and out["peak_precision"] == "bf16"
    assert out["fraction_of_peak"] == pytest.approx(
        out["gflop_per_meta_step"] / out["seconds_per_meta_step"] / out["gemm_peak_gflops_bf16"])


def test_sweep_tokens():
    assert bench._variant_flags("base") == []
    assert bench._variant_flags("nocl+nomallopt+bf16+ranks2") == ["--no-channels-last", "--no-mallopt", "--bf16",
                                                                 "--ranks", "2"]
    with pytest.raises(UserError, match="unknown variant token 'cl'"):
        bench._variant_flags("cl")


# ------------------------------------------------------------------------------------------------
# bf16


def test_bf16_precision_of_each_part(pool):
    cfg = load_config(bench.CONFIG, ["omniglot.filters=8", "omniglot.precision=bf16"])
    adapter = OmniglotAdapter(cfg.task_config, seed=0, data=pool)
    model = adapter.make_model(torch.Generator().manual_seed(0))
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = (inputs[0].dtype, output.dtype)
        return hook
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d)):
            module.register_forward_hook(record(name))
    task = adapter.sample_tasks("train", 1, np.random.default_rng(0))[0]
    loss = task.loss(model, task.batch("train"))
    loss.backward()
    assert loss.dtype == torch.float32
    assert all(seen[f"blocks.{i}.conv"][1] == torch.bfloat16 for i in range(4)) and seen["head"][1] == torch.bfloat16
    assert all(seen[f"blocks.{i}.bn"] == (torch.float32, torch.float32) for i in range(4))
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(b.dtype != torch.bfloat16 for b in model.buffers())
    metrics = adapter.evaluate(task, model)                  # evaluation runs the same bf16 forward
    assert np.isfinite(metrics["test_loss"]) and 0.0 <= metrics["test_accuracy"] <= 1.0


def test_tiered_model_takes_the_same_precision():
    """tieredImageNet's model shares the path (image_classification.PRECISIONS): bf16 convs, fp32 BatchNorm
    and logits; fp32 leaves the forward as it was."""
    from train.tasks.tiered import TieredConv
    x = torch.rand(2, 3, 16, 16)
    fp32 = TieredConv(10, (8, 8), image_size=16, generator=torch.Generator().manual_seed(0))
    bf16 = TieredConv(10, (8, 8), image_size=16, generator=torch.Generator().manual_seed(0), precision="bf16")
    seen = []
    bf16.blocks[1].bn.register_forward_hook(lambda m, i, o: seen.append(i[0].dtype))
    bf16.blocks[1].conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out = bf16(x)
    assert out.dtype == torch.float32 and seen == [torch.bfloat16, torch.float32]
    assert torch.allclose(out, fp32(x), atol=0.05) and not torch.equal(out, fp32(x))


def test_bad_precision_is_one_line():
    with pytest.raises(ConfigError, match="precision must be fp32 or bf16, got 'fp16'"):
        build_config({"name": "x", "task": "omniglot", "method": "leap"}, ["omniglot.precision=fp16"])
    with pytest.raises(ConfigError, match="warp_batch_norm"):
        build_config({"name": "x", "task": "tiered", "method": "leap"},
                     ["tiered.precision=bf16", "tiered.warp=linear", "tiered.warp_batch_norm=true"])


@pytest.fixture(scope="module")
def real_data():
    if not (DATA / "images_background.zip").is_file():
        pytest.skip(f"real Omniglot data not found at {DATA}")
    from train.tasks.omniglot_data import load_omniglot
    return load_omniglot(DATA)          # the decoded-image cache, as the benchmark and `metarl train` use


def test_bf16_meta_gradient_is_above_the_fp32_noise_floor(real_data):
    """Real tasks, 2 Leap-watched steps: bf16 moves the meta-gradient far less than another batch order.

    Meaningful because: fp32 is deterministic (the floor is not run-to-run noise), the two orders give
    different meta-gradients, bf16 does change the computation (cosine below 1), and it stays above the
    floor by a wide margin (a meta-gradient unrelated to fp32's would sit near the floor, around 0)."""
    over = ["inner.steps=2", "omniglot.filters=16"]
    out = cosine_bench.compare(cosine_bench.CONFIG, over, tasks=2, data=real_data)
    floor, bf16 = out["cos_fp32A_fp32B"], out["cos_bf16A_fp32A"]
    assert floor < 0.99
    assert bf16 < 1 - 1e-6
    assert bf16 >= floor + 0.3
    assert out["bf16_at_or_above_floor"]
    cfg = load_config(cosine_bench.CONFIG, over)
    adapter = OmniglotAdapter(cfg.task_config, seed=cfg.seed, data=real_data)
    task = adapter.sample_tasks("train", 1, np.random.default_rng(0))
    first, again = (cosine_bench.task_meta_gradients(cfg, adapter, task)[0] for _ in range(2))
    assert torch.equal(first, again)
