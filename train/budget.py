"""The resource budget of a run, checked from its resolved config before anything is allocated.

A config can pass every type and range check and still ask for more than the machine has: 100,000 Atari envs,
a meta-batch of 10⁹ tasks, a maze of 100,001² cells, a hidden layer of 10⁶ units. Left to run, such a config is
killed by the kernel, aborts in an allocator, or ends in a traceback after it has written ``config.yaml``.

:func:`check_budget` estimates the peak memory from the config — environment buffers, rollouts and the
activations kept for their backward pass, the model and the states kept beside it (× seeds), the tasks of a
meta-batch and of the evaluation, MAML's unrolled inner steps — and refuses in one line (exit 2), naming the key
behind the largest term and the estimate, when it exceeds the limit: ``run.max_memory`` (GiB) or else the
machine's memory (the smaller of the physical memory and a cgroup limit). The estimate is a rough lower
bound, built from measured constants (maze: peak RSS over seeds and batch sizes; Atari: EnvPool's frame
buffers and the Nature CNN's activations): it catches the orders-of-magnitude mistakes, not a config that
needs 30 % more than it says. ``run.threads`` and ``atari.env_threads`` are capped at :data:`THREADS_PER_CORE`
× the cores (a million threads segfault in OpenMP or abort in EnvPool).
"""

from __future__ import annotations

import os
from typing import Any

from .errors import ConfigError

GIB = 1024 ** 3
THREADS_PER_CORE = 8
TASK_BYTES = 2048           # a sampled task's Python objects (its key, seeds, RNG), before any data it holds
FLOAT = 4
# the key that sizes each family's model (named when the model itself is what does not fit)
MODEL_KEY = {"sine": "sine.hidden", "continual_sine": "continual_sine.hidden", "maze": "maze.hidden_size",
             "atari": "atari.network", "omniglot": "omniglot.filters", "tiered": "tiered.filters"}


def machine_memory() -> int | None:
    """Bytes this process may use: physical memory, or a smaller cgroup (v2 or v1) limit; None if unknown."""
    sizes = []
    try:
        sizes.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < 2 ** 60:
            sizes.append(int(text))
    return min(sizes) if sizes else None


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _mlp_params(sizes: list[int]) -> int:
    return sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))


def _family_terms(cfg: Any) -> tuple[list[tuple[str, float]], float, float]:
    """The task family's terms as (key, bytes), its model's parameter count and a task's data bytes."""
    tc, task = cfg.task_config, cfg.task
    terms: list[tuple[str, float]] = []
    params, task_bytes = 0.0, 0.0
    if task in ("sine", "continual_sine"):
        hidden = list(tc.hidden)
        if task == "continual_sine" and tc.warp != "none":
            hidden += [tc.warp_hidden] * len(tc.hidden)
        params = float(_mlp_params([1, *tc.hidden, 1]) + (tc.warp_hidden ** 2 * len(tc.hidden)
                                                            if task == "continual_sine" else 0))
        width = sum(hidden) + 2
        # a batch's activations, kept for the backward pass (pre- and post-activation, their gradients)
        terms.append((f"{task}.batch_size", 4.0 * FLOAT * tc.batch_size * width))
        terms.append((f"{task}.test_points", 4.0 * FLOAT * tc.test_points * width))
        task_bytes = 2.0 * FLOAT * (tc.batch_size + tc.test_points)
        if task == "continual_sine":
            terms.append((f"{task}.subtasks", 2.0 * FLOAT * tc.subtasks * tc.steps_per_subtask
                          * (tc.batch_size + tc.val_batch_size + tc.test_points)))
    elif task == "maze":
        seeds = max(1, len(tc.seeds))
        h, n, b, t = tc.hidden_size, tc.maze_size, tc.batch, tc.episode_length
        lstm = "lstm" in tc.model
        params = float((4 if lstm else 1) * (h * h + 17 * h + h) + h * 6)
        if tc.model.startswith("warp"):
            params += 4.0 * tc.warp_hidden_size * (tc.warp_hidden_size + h) + tc.warp_hidden_size * h
        if tc.model.startswith("plastic"):
            params += float(h * h)
        # measured peak RSS over one iteration (docs: train/budget.py): ≈ 18 bytes per seed × maze × step ×
        # unit for the RNN, ≈ 60 for the LSTM (its gates); the warp models' adaptation LSTM on top
        per_unit = 64.0 if lstm else 24.0
        units = h + (4 * tc.warp_hidden_size if tc.model.startswith("warp") else 0)
        rollout = per_unit * seeds * b * t * units
        if tc.model.startswith("plastic"):               # a Hebbian trace of h × h per maze, kept per step
            rollout += 2.0 * FLOAT * seeds * b * t * h * h
        # the key furthest above its usual value (the maze configs': 1 seed, 30 mazes, 200 steps, 100 units)
        scale = {"maze.seeds": seeds, "maze.batch": b / 30, "maze.episode_length": t / 200,
                 "maze.hidden_size": h / 100}
        if tc.model.startswith("warp"):
            scale["maze.warp_hidden_size"] = tc.warp_hidden_size / 100
        key = max(scale, key=scale.get)
        terms.append((key, rollout))
        terms.append(("maze.maze_size", 8.0 * seeds * b * n * n * 2))     # every maze's grid, and its walls
        terms.append(("maze.hidden_size" if h >= tc.warp_hidden_size else "maze.warp_hidden_size",
                      FLOAT * 8.0 * seeds * params))                     # θ, φ, Adam's moments, gradients
    elif task == "atari":
        a2c = tc.a2c
        channels = 3 if tc.observation == "rgb" else 4
        obs = channels * 84 * 84
        fc = 256 if tc.network == "mnih2013" else 512
        params = float(32 * channels * 64 + 64 * 32 * 16 + 64 * 64 * 9 + 3136 * fc + fc * 20)
        # per env: EnvPool's raw frames (two 210×160 RGB screens for the max over frames) and the frame stack
        env = 2 * 210 * 160 * 3 + obs
        # per env and rollout step: the observation as floats and the encoder's activations, kept for the loss
        step = FLOAT * (obs + 2 * (32 * 20 * 20 + 64 * 9 * 9 + 64 * 7 * 7 + fc))
        rollout = float(a2c.num_envs) * (env + a2c.n_steps * step)
        key = "atari.a2c.n_steps" if a2c.n_steps / 5 > a2c.num_envs / 16 else "atari.a2c.num_envs"
        terms.append((key, rollout))
    elif task == "omniglot":
        pixels = 28 * 28
        params = float(tc.filters * (9 + 9 * tc.filters * 3) + tc.filters * tc.ways)
        act = 4.0 * FLOAT * tc.filters * pixels * 2          # four blocks, each smaller than the first
        terms.append(("omniglot.batch_size", act * tc.batch_size))
        task_bytes = FLOAT * pixels * tc.ways * (tc.train_per_class + tc.test_per_class)
    elif task == "tiered":
        filters = list(tc.filters)
        act = sum(4.0 * FLOAT * f * (84 / 2 ** i) ** 2 for i, f in enumerate(filters))
        params = float(sum(9 * a * b for a, b in zip([3, *filters], filters)) + filters[-1] * tc.ways)
        terms.append(("tiered.batch_size", act * tc.batch_size))
        terms.append(("tiered.eval_batch_size", act * tc.eval_batch_size / 2))     # no backward pass there
        terms.append(("tiered.cache_images", 84.0 * 84 * 3 * tc.cache_images))
    return terms, params, task_bytes


def estimate(cfg: Any) -> list[tuple[str, float]]:
    """The peak memory's larger terms as (the config key behind it, bytes), largest first."""
    terms, params, task_bytes = _family_terms(cfg)
    terms.append(("meta.meta_batch", cfg.meta.meta_batch * (TASK_BYTES + task_bytes)))
    terms.append(("eval.tasks", cfg.eval.tasks * (TASK_BYTES + task_bytes)))
    if cfg.method == "maml":
        # the inner loop is unrolled for the outer gradient: every step's parameters, gradients and activations
        per_step = 3.0 * FLOAT * params + max((b for _, b in terms), default=0.0) / 4
        terms.append(("maml.steps", cfg.maml.steps * per_step))
    # θ⁰ and the meta-learner's accumulators and optimiser state beside the task model: the model's size
    terms.append((MODEL_KEY.get(cfg.task, "task"), 6.0 * FLOAT * params))
    return sorted(terms, key=lambda kv: -kv[1])


def _gib(n: float) -> str:
    return f"{n / GIB:,.1f} GiB" if n >= 0.1 * GIB else f"{n / 1024 ** 2:,.0f} MiB"


def _value(cfg: Any, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node.task_config if part == cfg.task and node is cfg else getattr(node, part, None)
    return len(node) if isinstance(node, list) and key == "maze.seeds" else node


def check_budget(cfg: Any) -> None:
    """Refuse (ConfigError, one line) a config whose threads or estimated peak memory exceed this machine
    (module docstring). Called before the run directory is touched and before anything is built."""
    limit_threads = THREADS_PER_CORE * cores()
    for key, value in (("run.threads", cfg.run.threads),
                       ("atari.env_threads", getattr(cfg.task_config, "env_threads", None) if cfg.task == "atari"
                        else None)):
        if value is not None and value > limit_threads:
            raise ConfigError(f"config key {key!r} is {value}: more than {THREADS_PER_CORE} × the {cores()} cores "
                              f"of this machine ({limit_threads}); threads beyond the cores only wait")
    terms = estimate(cfg)
    total = sum(b for _, b in terms)
    if cfg.run.max_memory:
        limit, whose = cfg.run.max_memory * GIB, f"run.max_memory ({cfg.run.max_memory:g} GiB)"
    else:
        limit, whose = machine_memory(), "this machine's memory"
        if limit is None:
            return
        whose += f" ({_gib(limit)})"
    if total > limit:
        key, part = terms[0]
        shown = _value(cfg, key)
        name = f"len({key})" if key == "maze.seeds" else key
        what = f"config key {name!r} = {shown}" if shown is not None else f"config key {key!r}"
        raise ConfigError(f"{what} needs about {_gib(total)} of memory by the run's estimate ({_gib(part)} of it "
                          f"from {key}), more than {whose}: lower it, or set run.max_memory (GiB)")
