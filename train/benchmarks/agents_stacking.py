"""How to stack K Atari agents' convolutions: agents/batched_a2c.py ``BatchedActorCritic`` with one grouped
convolution per layer (``grouped``, its choice on a GPU) or each agent's own convolutions one after another on
views of the stacked weights (``loop``, its choice on a CPU), against ``torch.func.vmap`` of the single model over
``stack_module_state`` — issue 30's "measure which is faster on each device".

All three compute the same K networks (checked to float tolerance before timing) on the same uint8 frames, (K, N, C,
84, 84): the acting pass (forward, no gradient, N = ``--num-envs`` frames per agent); an update in one pass (``update``:
forward and backward of a scalar of logits and values over N × ``--n-steps`` frames per agent, as with
``reuse_forward`` off); and an update as the A2C loop runs it by default (``update_reused``: ``--n-steps`` passes of
N frames with their graphs kept, then one backward). vmap cannot ask for a
channels-last layout inside the map, so its frames stay in torch's default layout; the stacked model converts
them as the single model does. Variants alternate round by round; figures are medians in milliseconds:

    metarl bench agents-stacking [--agents 8] [--num-envs 16] [--n-steps 5] [--network nature] [--device cpu]

Last line (JSON): ``ms`` (by pass and variant), ``vmap_over_grouped`` and ``loop_over_grouped`` (by pass: that
variant's time ÷ grouped's; above 1 the grouped form is faster), ``agents``, ``device``, ``machine``.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Callable

import torch

from ._common import machine, parser, torch_threads

PASSES = ("act", "update", "update_reused")
VARIANTS = ("grouped", "vmap", "loop")


def _models(args, device: torch.device):
    from agents.batched_a2c import BatchedActorCritic
    from agents.nets import ActorCritic

    channels = 3 if args.network == "mnih2013" else 4
    models = [ActorCritic(args.actions, in_channels=channels, network=args.network,
                          generator=torch.Generator().manual_seed(k)).to(device) for k in range(args.agents)]
    params, buffers = torch.func.stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    # the single model's input step without its channels-last conversion, which vmap cannot express
    base.encoder.conv_features = lambda obs: base.encoder.conv(obs.float().div(255.0))
    mapped = torch.func.vmap(lambda p, b, x: torch.func.functional_call(base, (p, b), (x,)))
    return {"grouped": BatchedActorCritic(models, convolutions="grouped"),
            "vmap": lambda obs: mapped(params, buffers, obs),
            "loop": BatchedActorCritic(models, convolutions="loop")}, channels


def _passes(forward: Callable, frames: torch.Tensor, update_frames: torch.Tensor, n_steps: int,
            device: torch.device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def act() -> None:
        with torch.no_grad():
            forward(frames)
        sync()

    def update() -> None:
        logits, values = forward(update_frames)
        (logits.square().sum() + values.square().sum()).backward()
        sync()

    def update_reused() -> None:        # as the A2C loop runs with reuse_forward: n_steps acting passes, one backward
        loss = sum(o.square().sum() for step in update_frames.chunk(n_steps, dim=1) for o in forward(step))
        loss.backward()
        sync()
    return {"act": act, "update": update, "update_reused": update_reused}


def run(argv: list[str]) -> dict:
    p = parser(__doc__.splitlines()[0], rounds=7, threads=0)
    p.add_argument("--agents", type=int, default=8)
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--n-steps", type=int, default=5)
    p.add_argument("--actions", type=int, default=6)
    p.add_argument("--network", choices=("nature", "mnih2013"), default="nature")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if min(args.agents, args.num_envs, args.n_steps, args.actions, args.rounds) < 1:
        p.error("--agents, --num-envs, --n-steps, --actions and --rounds must be at least 1")
    from ..device import resolve_device
    device = resolve_device(args.device, option="--device")
    with torch_threads(args.threads):
        forwards, channels = _models(args, device)
        g = torch.Generator().manual_seed(0)
        frames = torch.randint(0, 256, (args.agents, args.num_envs * args.n_steps, channels, 84, 84),
                               generator=g, dtype=torch.uint8).to(device)
        act_frames = frames[:, : args.num_envs]
        with torch.no_grad():
            outs = {v: forward(act_frames) for v, forward in forwards.items()}
        for v in VARIANTS[1:]:                              # the same networks, or the timing is moot
            for got, want in zip(outs[v], outs["grouped"]):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        runs = {v: _passes(forward, act_frames, frames, args.n_steps, device) for v, forward in forwards.items()}
        times = {(ps, v): [] for ps in PASSES for v in VARIANTS}
        for r in range(args.rounds + 1):                                # round 0: warm-up, not counted
            for ps in PASSES:
                for v in VARIANTS:
                    start = time.perf_counter()
                    runs[v][ps]()
                    if r:
                        times[ps, v].append(time.perf_counter() - start)
        host = machine(device)
    ms = {ps: {v: round(1e3 * statistics.median(times[ps, v]), 2) for v in VARIANTS} for ps in PASSES}
    for ps in PASSES:
        for v in VARIANTS:
            rounds = ", ".join(f"{1e3 * t:.1f}" for t in times[ps, v])
            print(f"{ps:>13} {v:>8}: {ms[ps][v]:8.2f} ms  (rounds: {rounds})")
    result = {"agents": args.agents, "num_envs": args.num_envs, "n_steps": args.n_steps, "network": args.network,
              "device": str(device), "machine": host, "rounds": args.rounds, "ms": ms}
    for v in VARIANTS[1:]:
        result[f"{v}_over_grouped"] = {ps: round(ms[ps][v] / ms[ps]["grouped"], 3) for ps in PASSES}
    return result
