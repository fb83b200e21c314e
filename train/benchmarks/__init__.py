"""The benchmarks of `metarl bench NAME [ARGS…]`: each module's ``run(argv) -> dict`` times one thing and
returns its figures. Other modules here (``_common``: argument parsing and timing) are helpers, not listed."""

from __future__ import annotations

BENCHMARKS: dict[str, tuple[str, str]] = {      # name → (module, what it measures)
    "a2c-throughput": ("train.benchmarks.a2c_throughput",
                       "A2C env steps/s on Atari: our loop against Stable-Baselines3 A2C"),
    "agents-stacking": ("train.benchmarks.agents_stacking",
                        "K Atari agents as one model: grouped or per-agent convolutions against torch.func.vmap"),
    "distributed": ("train.benchmarks.distributed", "meta-steps/s of the trainer with 1 and 2 torchrun ranks"),
    "leap-overhead": ("train.benchmarks.leap_overhead",
                      "an Omniglot conv-net inner loop with and without Leap watching it"),
    "leap-overhead-a2c": ("train.benchmarks.leap_overhead_a2c",
                          "an Atari A2C inner loop with and without Leap watching it"),
    "maze-iteration": ("train.benchmarks.maze_iteration", "milliseconds per maze training iteration"),
    "omniglot-bf16-cosine": ("train.benchmarks.omniglot_bf16_cosine",
                             "cosine of Leap's Omniglot meta-gradient in bf16 to fp32, against fp32's noise floor"),
    "omniglot-meta-step": ("train.benchmarks.omniglot_meta_step",
                           "seconds per Leap meta-step at the multi-shot Omniglot paper protocol, and its "
                           "fraction of the GEMM peak"),
}
