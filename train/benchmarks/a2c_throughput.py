"""A2C throughput on Atari: our loop vs Stable-Baselines3 ``A2C("CnnPolicy")``, in one run.

Variants (same game, number of envs, n_steps, network and zoo hyper-parameters; env steps per second):

- ``envpool_random``  raw EnvPool stepping with random actions — the bound for any learner here;
- ``ours``            ``agents.a2c.train_agent`` on EnvPool with the default ``A2CConfig`` (one env group);
- ``ours_no_reuse``   ``ours`` with ``reuse_forward=False``: a second forward pass over the rollout, as SB3 does;
- ``ours_overlap``    the same with ``--groups`` env groups: EnvPool steps one while the network computes;
- ``ours_bf16``       ``ours`` with the encoder autocast to bfloat16 (``A2CConfig.precision="bf16"``);
- ``ours_async``      ``ours`` on EnvPool's async mode, ``--async-batch`` envs per receive (default half of
                      ``--num-envs``; agents/async_a2c.py), against the same pool's bound in lockstep;
- ``ours_graphs``     ``ours`` with CUDA graphs (``A2CConfig.cuda_graphs``; a CUDA ``--device`` only);
- ``sb3_envpool``     SB3 A2C on the same EnvPool envs (``SB3AtariVecEnv``, envs/atari_sb3.py): isolates the
                      learner's cost;
- ``sb3_gym``         SB3 A2C as usually run: ``make_atari_env`` + ``VecFrameStack(4)`` (DummyVecEnv, ale-py);
- ``sb3_gym_tuned``   ``sb3_gym`` with our process settings (below), to separate them from our loop's own gain.

Each variant runs in its own child process, set up as its users run it: SB3 with glibc's and OpenMP's
defaults, ours with what the ``metarl`` command sets (``train/runtime.py``: freed memory kept in the heap, a
short OpenMP idle spin), reading the optimiser's statistics (agents/a2c.py ``rmsprop_stats``) as often per env
step as a 100,000-step run does (20 reads), not at 20 points of every round — but at least once a round, so
rounds under 7,500 env steps read more often than a run. Run it through ``metarl bench``, which sets
the spin before torch loads.

Variants run in alternating rounds and the median per variant is reported, so a background load that
comes and goes hits all of them alike. ``--threads`` applies to every variant; the default (0) leaves
torch's own default, one thread per core, as SB3 users run it and as the Atari configs train.

``--device`` (default ``cpu``) puts our network, buffers and optimiser and SB3's policy on that device
(``cuda``, ``cuda:N``, ``auto``); EnvPool steps on CPU threads either way. ``--network mnih2013
--observation rgb`` measures our loop (and the random-action bound) with the Leap paper's network and RGB
frames (configs/atari_leap_paper.yaml); the SB3 variants keep their Nature CNN on grey 4-stacks.

    metarl bench a2c-throughput [--steps 4000] [--rounds 3] [--threads 0] [--device cpu]

``--agents K`` measures instead, in one run, the cost of training K independent agents as one stacked model
(agents/batched_a2c.py; ``--games``: their games, cycled over the K agents, default ``--game`` for all):

- ``agents_single``   the K agents one by one, each alone with ``train_agent`` for the round's steps: their env
                      steps over their summed time (one agent's rate, averaged over the K games);
- ``agents_batched``  K agents with ``train_agents``: env steps/s of each agent (all step alike);
- ``agents_random``   the K agents' pools stepping random actions together (each pool sent, then each
                      received): their combined env steps/s, the bound for the K agents together.

Its last JSON line has ``agents``; ``per_agent_sps_single`` (an agent alone: env steps/s, over the K games);
``per_agent_sps_batched`` (the K batched agents' env steps per second together, K × ``each_agent_sps_batched``:
the inverse of one agent-step's cost, so comparable with one agent alone); ``batched_cost_ratio``
(= per_agent_sps_single / per_agent_sps_batched: an agent's cost batched over its cost alone, like the maze
bench's per-seed ratio; below 1 batching pays); ``envpool_random_sps_agents`` and ``batched_of_bound``
(per_agent_sps_batched ÷ that bound). With ``--cuda-graphs`` (CUDA only) the same run also measures
``agents_single_graphs`` and ``agents_batched_graphs`` (``A2CConfig.cuda_graphs``), adding
``per_agent_sps_single_graphs``, ``per_agent_sps_batched_graphs`` (K agents together, as above),
``each_agent_sps_batched_graphs`` and ``batched_graphs_of_bound``.

    metarl bench a2c-throughput --agents 8 [--games Pong,Breakout,Qbert] [--steps 2000] [--device cuda]

Both JSON lines also have ``cores_busy``: for each variant, the CPU time of its process (every thread, EnvPool's
included) over a round's wall time, as a fraction of the machine's cores (median over the rounds). On an
otherwise idle machine 1 − ``cores_busy`` is the time the cores waited; and ``sps`` / ``cores_busy`` compares
the CPU work per env step of two variants apart from their waiting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import weakref
from typing import Callable

import numpy as np
import torch

from ..runtime import keep_freed_memory
from ._common import atari_game, machine, parser, torch_threads

DEFAULT_VARIANTS = ("envpool_random", "ours", "ours_no_reuse", "ours_overlap", "ours_bf16", "sb3_envpool", "sb3_gym",
                    "sb3_gym_tuned")
VARIANTS = DEFAULT_VARIANTS + ("ours_async", "ours_graphs")
AGENT_VARIANTS = ("agents_random", "agents_single", "agents_batched")     # --agents K
GRAPH_AGENT_VARIANTS = ("agents_single_graphs", "agents_batched_graphs")  # --agents K --cuda-graphs


def _parse(argv: list[str]) -> argparse.Namespace:
    p = parser(__doc__.splitlines()[0], threads=0)       # --threads (torch, default: one per core), --rounds
    p.add_argument("--game", default="Pong")
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--n-steps", type=int, default=5)
    p.add_argument("--steps", type=int, default=4000, help="env steps per variant per round")
    p.add_argument("--env-threads", type=int, default=None, help="EnvPool threads (default: min(envs, cores))")
    p.add_argument("--groups", type=int, default=2, help="env groups for `ours_overlap`")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    p.add_argument("--async-batch", type=int, default=0,
                   help="`ours_async`: envs per receive (default --num-envs / 2)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="--agents: also the single and batched agents with CUDA graphs (a CUDA --device only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu",
                   help="cpu (default), cuda, cuda:N or auto: where our loop and SB3 compute")
    p.add_argument("--network", default="nature", choices=("nature", "mnih2013"), help="our loop's network")
    p.add_argument("--observation", default="gray4", choices=("gray4", "rgb"), help="our loop's frames")
    p.add_argument("--agents", type=int, default=0,
                   help="K > 0: K agents batched against one agent and the K pools' random-action bound")
    p.add_argument("--games", default=None,
                   help="--agents: the agents' games, comma-separated, cycled (default --game)")
    p.add_argument("--serve", default=None, help=argparse.SUPPRESS)   # internal: one variant in a child process
    args = p.parse_args(argv)
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.agents < 0 or args.num_envs < 1 or args.n_steps < 1 or args.steps < 1:
        p.error("--agents must be >= 0; --num-envs, --n-steps and --steps >= 1")
    args.game = atari_game(args.game)
    names = [g for g in (args.games or args.game).split(",") if g.strip()]
    if not names:
        p.error("--games lists no game")
    args.agent_games = [atari_game(names[k % len(names)]) for k in range(max(args.agents, 1))]
    from ..device import resolve_device
    args.device = str(resolve_device(args.device, option="--device"))   # CUDA absent: one line, exit 2
    if ("ours_graphs" in args.variants.split(",") or args.cuda_graphs) and not args.device.startswith("cuda"):
        p.error("ours_graphs and --cuda-graphs need a CUDA --device")
    args.async_batch = args.async_batch or max(1, args.num_envs // 2)
    if args.num_envs % args.async_batch:
        p.error(f"--async-batch ({args.async_batch}) must divide --num-envs ({args.num_envs})")
    return args


def _envpool_random(args) -> Callable[[], float]:
    from envs.atari import make_atari

    env = make_atari(args.game, args.num_envs, args.seed, backend="envpool", num_threads=args.env_threads,
                     observation=args.observation)
    env.reset()
    rng = np.random.default_rng(args.seed)
    actions = rng.integers(0, env.num_actions, size=(64, args.num_envs))

    def measure() -> float:
        n = max(1, args.steps // args.num_envs)
        start = time.perf_counter()
        for i in range(n):
            env.step(actions[i % 64])
        return n * args.num_envs / (time.perf_counter() - start)
    return measure


RUN_STEPS = 100_000      # env steps of a typical run (a transfer-study visit): the optimiser-statistics reads' rate


def _reads(steps: int) -> int:
    """How many updates of a ``steps``-step round read the optimiser's statistics: as many as in ``steps`` of a
    ``RUN_STEPS`` run (agents/a2c.py reads OPTIMIZER_POINTS per run, however short: 20 per round would bill a
    round several times a run's share), at least one, so the cost is in the figure."""
    from agents.a2c import OPTIMIZER_POINTS
    return max(1, round(OPTIMIZER_POINTS * steps / RUN_STEPS))


def _ours(args, groups: int, precision: str = "fp32", reuse_forward: bool = True, async_batch: int = 0,
          graphs: bool = False) -> Callable[[], float]:
    from agents.a2c import A2CConfig, make_optimizer, train_agent
    from agents.nets import ActorCritic
    from envs.atari import make_atari_groups

    cfg = A2CConfig(num_envs=args.num_envs, n_steps=args.n_steps, groups=groups, precision=precision,
                    reuse_forward=reuse_forward, async_batch=async_batch, cuda_graphs=graphs)
    envs = make_atari_groups(args.game, args.num_envs, args.seed, groups=groups, backend="envpool",
                             num_threads=args.env_threads, observation=args.observation,
                             **({"batch_size": async_batch} if async_batch else {}))
    model = ActorCritic(envs[0].num_actions, in_channels=envs[0].observation_shape[0], network=args.network,
                        generator=torch.Generator().manual_seed(args.seed)).to(args.device)
    optimizer = make_optimizer(model.parameters(), cfg)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    train_agent(envs, model, optimizer, 4 * cfg.batch_size, cfg=cfg, generator=gen)     # warm-up

    def measure() -> float:
        return train_agent(envs, model, optimizer, args.steps, cfg=cfg, generator=gen,
                           optimizer_points=_reads(args.steps)).sps
    return measure


def _agents_random(args) -> Callable[[], float]:
    """The K agents' pools stepping random actions together: combined env steps/s."""
    from envs.atari import make_atari

    envs = [make_atari(game, args.num_envs, args.seed + 1000 * k, backend="envpool", num_threads=args.env_threads,
                       observation=args.observation) for k, game in enumerate(args.agent_games)]
    for env in envs:
        env.reset()
    rng = np.random.default_rng(args.seed)
    actions = [rng.integers(0, env.num_actions, size=(64, args.num_envs)) for env in envs]

    def measure() -> float:
        n = max(1, args.steps // args.num_envs)
        start = time.perf_counter()
        for i in range(n):
            for env, a in zip(envs, actions):
                env.send(a[i % 64])
            for env in envs:
                env.recv()
        return n * args.num_envs * len(envs) / (time.perf_counter() - start)
    return measure


def _agents(args, batched: bool, graphs: bool = False) -> Callable[[], float]:
    """The K agents one by one, each alone with ``train_agent`` (their env steps over their summed time), or the K
    agents as one stacked model: env steps/s of each agent."""
    from agents.a2c import A2CConfig, make_optimizer, train_agent
    from agents.batched_a2c import BatchedActorCritic, train_agents
    from agents.nets import ActorCritic
    from envs.atari import make_atari

    cfg = A2CConfig(num_envs=args.num_envs, n_steps=args.n_steps, cuda_graphs=graphs)
    envs = [make_atari(game, args.num_envs, args.seed + 1000 * k, backend="envpool", num_threads=args.env_threads,
                       observation=args.observation) for k, game in enumerate(args.agent_games)]
    models = [ActorCritic(env.num_actions, in_channels=env.observation_shape[0], network=args.network,
                          generator=torch.Generator().manual_seed(args.seed + k)).to(args.device)
              for k, env in enumerate(envs)]
    gens = [torch.Generator(device=args.device).manual_seed(args.seed + k) for k in range(len(envs))]
    if not batched:
        # every game's agent, not the first one's only: games' emulators differ in cost, and batching replaces
        # training the same K agents one after another
        optimizers = [make_optimizer(m.parameters(), cfg) for m in models]

        def one(steps: int) -> float:
            runs = [train_agent(env, m, opt, steps, cfg=cfg, generator=gen, optimizer_points=_reads(steps))
                    for env, m, opt, gen in zip(envs, models, optimizers, gens)]
            return sum(r.env_steps for r in runs) / sum(r.seconds for r in runs)
    else:
        model = BatchedActorCritic(models)
        optimizer = make_optimizer(model.parameters(), cfg)

        def one(steps: int) -> float:
            return train_agents(envs, model, optimizer, steps, cfg, gens, optimizer_points=_reads(steps))[0].sps
    one(4 * cfg.batch_size)                                                               # warm-up
    return lambda: one(args.steps)


def _sb3(args, backend: str) -> Callable[[], float]:
    from stable_baselines3 import A2C
    from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike

    if backend == "envpool":
        from envs.atari import make_atari
        from envs.atari_sb3 import SB3AtariVecEnv
        venv = SB3AtariVecEnv(make_atari(args.game, args.num_envs, args.seed, backend="envpool",
                                         num_threads=args.env_threads))
    else:
        import ale_py
        import gymnasium as gym
        from stable_baselines3.common.env_util import make_atari_env
        from stable_baselines3.common.vec_env import VecFrameStack

        from envs.atari import canonical_game
        gym.register_envs(ale_py)
        game = canonical_game(args.game, "gymnasium")
        venv = VecFrameStack(make_atari_env(f"{game}NoFrameskip-v4", n_envs=args.num_envs, seed=args.seed), 4)
    # rl-baselines3-zoo a2c.yml, atari: ent 0.01, vf 0.25, RMSpropTFLike(eps=1e-5)
    model = A2C("CnnPolicy", venv, n_steps=args.n_steps, ent_coef=0.01, vf_coef=0.25, seed=args.seed,
                device=args.device, verbose=0,
                policy_kwargs=dict(optimizer_class=RMSpropTFLike, optimizer_kwargs=dict(eps=1e-5)))
    model.learn(4 * args.num_envs * args.n_steps)                                         # warm-up

    def measure() -> float:
        steps = max(1, args.steps // (args.num_envs * args.n_steps)) * args.num_envs * args.n_steps
        start = time.perf_counter()
        model.learn(steps, reset_num_timesteps=False)
        return steps / (time.perf_counter() - start)
    return measure


def _maker(args, variant: str) -> Callable[[], float]:
    return {"envpool_random": lambda: _envpool_random(args), "ours": lambda: _ours(args, 1),
            "ours_no_reuse": lambda: _ours(args, 1, reuse_forward=False),
            "ours_overlap": lambda: _ours(args, args.groups), "ours_bf16": lambda: _ours(args, 1, "bf16"),
            "ours_async": lambda: _ours(args, 1, async_batch=args.async_batch),
            "ours_graphs": lambda: _ours(args, 1, graphs=True),
            "agents_single_graphs": lambda: _agents(args, False, graphs=True),
            "agents_batched_graphs": lambda: _agents(args, True, graphs=True),
            "sb3_envpool": lambda: _sb3(args, "envpool"), "sb3_gym": lambda: _sb3(args, "gymnasium"),
            "sb3_gym_tuned": lambda: _sb3(args, "gymnasium"), "agents_random": lambda: _agents_random(args),
            "agents_single": lambda: _agents(args, False), "agents_batched": lambda: _agents(args, True)}[variant]()


def _as_users_run_sb3(variant: str) -> bool:
    return variant.startswith("sb3") and not variant.endswith("_tuned")


def _in_child(argv: list[str], variant: str) -> Callable[[], tuple[float, float]]:
    """``variant`` built in a child process; each call measures one round there."""
    env = dict(os.environ)
    if _as_users_run_sb3(variant):
        env.pop("GOMP_SPINCOUNT", None)
    child = subprocess.Popen([sys.executable, "-m", __name__, *argv, "--serve", variant], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(line: str) -> str:
        child.stdin.write(line + "\n")
        child.stdin.flush()
        for answer in child.stdout:                        # skips what the emulator prints on stdout
            if answer.startswith("sps "):
                return answer
        raise RuntimeError(f"benchmark child for {variant} failed (exit {child.wait()})")
    ask("ready?")
    weakref.finalize(ask, child.stdin.close)               # EOF ends the child's loop

    def measure() -> tuple[float, float]:
        _, sps, _, busy = ask("measure").split()
        return float(sps), float(busy)
    return measure


def _serve(args) -> None:
    """Child side of :func:`_in_child`: answer each line on stdin with one round's steps per second."""
    if not _as_users_run_sb3(args.serve):
        keep_freed_memory()                                # as `metarl train` runs our loop
    measure = None
    for line in sys.stdin:
        if measure is None:
            measure = _maker(args, args.serve)
            print("sps 0", flush=True)
        else:
            wall, cpu = time.perf_counter(), time.process_time()      # CPU: every thread's, EnvPool's too
            sps = measure()
            print(f"sps {sps} busy {(time.process_time() - cpu) / (time.perf_counter() - wall) / os.cpu_count()}",
                  flush=True)


def run(argv: list[str]) -> dict:
    args = _parse(argv)
    agent_variants = list(AGENT_VARIANTS) + (list(GRAPH_AGENT_VARIANTS) if args.cuda_graphs else [])
    variants = agent_variants if args.agents else [v for v in VARIANTS if v in args.variants.split(",")]
    with torch_threads(args.threads) as threads:
        if args.serve:
            _serve(args)
            return {}
        host = machine(args.device)
        measures = {v: _in_child(argv, v) for v in variants}
        samples: dict[str, list[float]] = {v: [] for v in variants}
        busy: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.rounds):
            for v in variants:
                sps, cores_busy = measures[v]()
                samples[v].append(sps)
                busy[v].append(cores_busy)
    cores_busy = {v: round(statistics.median(busy[v]), 3) for v in variants}
    print("cores busy: " + ", ".join(f"{v} {b:.2f}" for v, b in cores_busy.items()))
    if args.agents:
        return _agents_result(args, host, threads, samples) | {"cores_busy": cores_busy}
    result = {"machine": host, "device": args.device, "network": args.network, "observation": args.observation,
              "game": args.game, "num_envs": args.num_envs,
              "n_steps": args.n_steps,
              "threads": threads, "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
              "env_threads": args.env_threads, "rounds": args.rounds, "steps_per_round": args.steps}
    for v in variants:
        sps = statistics.median(samples[v])
        result[f"{v}_sps"] = round(sps, 1)
        spread = ", ".join(f"{s:.0f}" for s in samples[v])
        print(f"{v:>15}: {sps:7.0f} env steps/s  (rounds: {spread})")
    for ours in ("ours", "ours_bf16"):
        for ref in ("sb3_envpool", "sb3_gym", "sb3_gym_tuned"):
            if ours in variants and ref in variants:
                key = f"ratio_{ours}_{ref}"
                result[key] = round(result[f"{ours}_sps"] / result[f"{ref}_sps"], 3)
                print(f"{ours + ' / ' + ref:>22}: {result[key]:.2f}x")
    for ours in ("ours", "ours_bf16", "ours_async", "ours_graphs"):
        if ours in variants and "envpool_random" in variants:
            key = f"ratio_{ours}_envpool_random"
            result[key] = round(result[f"{ours}_sps"] / result["envpool_random_sps"], 3)
            print(f"{ours + ' / envpool_random':>22}: {result[key]:.2f} of the random-action bound")
    if "ours" in variants and "ours_no_reuse" in variants:
        result["ratio_reuse"] = round(result["ours_sps"] / result["ours_no_reuse_sps"], 3)
        print(f"{'forward reuse gain':>22}: {result['ratio_reuse']:.2f}x (ours / ours_no_reuse)")
    for other, what in (("ours_overlap", "overlap"), ("ours_async", "async"), ("ours_graphs", "graphs")):
        if "ours" in variants and other in variants:
            result[f"ratio_{what}"] = round(result[f"{other}_sps"] / result["ours_sps"], 3)
            print(f"{what + ' gain':>22}: {result[f'ratio_{what}']:.2f}x ({other} / ours)")
    if "ours_async" in variants:
        result["async_batch"] = args.async_batch
    return result | {"cores_busy": cores_busy}


def _agents_result(args, host: str, threads: int, samples: dict[str, list[float]]) -> dict:
    """The ``--agents K`` figures (module docstring), medians over the rounds."""
    med = {v: statistics.median(samples[v]) for v in samples}
    for v in samples:
        unit = "combined env steps/s" if v == "agents_random" else "env steps/s per agent"
        print(f"{v:>15}: {med[v]:7.0f} {unit}  (rounds: {', '.join(f'{s:.0f}' for s in samples[v])})")
    K = args.agents
    batched = K * med["agents_batched"]            # agent-steps per second: one agent's steps cost 1 / batched
    ratio = med["agents_single"] / batched
    bound = batched / med["agents_random"]
    print(f"{'batched cost':>15}: {ratio:.2f} of one agent's cost per env step ({K} agents); "
          f"{bound:.2f} of the {K} pools' random-action bound")
    out = {"machine": host, "device": args.device, "network": args.network, "observation": args.observation,
           "games": args.agent_games, "num_envs": args.num_envs, "n_steps": args.n_steps, "threads": threads,
           "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"), "env_threads": args.env_threads,
           "rounds": args.rounds, "steps_per_round": args.steps,
           "agents": K, "per_agent_sps_single": round(med["agents_single"], 1),
           "per_agent_sps_batched": round(batched, 1), "each_agent_sps_batched": round(med["agents_batched"], 1),
           "batched_cost_ratio": round(ratio, 3),
           "envpool_random_sps_agents": round(med["agents_random"], 1), "batched_of_bound": round(bound, 3)}
    if "agents_batched_graphs" in med:
        graphs_bound = K * med["agents_batched_graphs"] / med["agents_random"]
        print(f"{'with graphs':>15}: {graphs_bound:.2f} of the {K} pools' random-action bound")
        out.update({"per_agent_sps_single_graphs": round(med["agents_single_graphs"], 1),
                    "per_agent_sps_batched_graphs": round(K * med["agents_batched_graphs"], 1),
                    "each_agent_sps_batched_graphs": round(med["agents_batched_graphs"], 1),
                    "batched_graphs_of_bound": round(graphs_bound, 3)})
    return out


if __name__ == "__main__":
    result = run(sys.argv[1:])
    if result:
        print(json.dumps(result))
