"""A/B of the cost of reading RMSprop's accumulator quantiles during A2C (docs/RESULTS.md, a2c-throughput's caveat):
train_agent for 2,000 env steps on Pong (16 envs, one torch thread) with the quantiles read at 20 updates, as every
run does, by the implementation before 8443938 ("old": torch.quantile over up to a million coordinates, kept here)
and by the current one ("new"), and with none; 3 alternating rounds. Prints env steps/s per round.

    .venv/bin/python scripts/quantile_cost_ab.py
"""

import torch

import agents.a2c as a2c
from agents.nets import ActorCritic
from envs.atari import make_atari


def old_quantiles(accumulators, eps, tf, quantiles=(0.1, 0.5, 0.9)):
    squares, multipliers = [], []
    for v, e in zip(accumulators, eps):
        v = v.detach().float().reshape(-1)
        squares.append(v)
        multipliers.append(1.0 / ((v + e).sqrt() if tf else v.sqrt() + e))
    q, out = torch.tensor(quantiles), {}
    for name, values in (("square_avg", squares), ("step_multiplier", multipliers)):
        flat = torch.cat(values)
        flat = flat[:: max(1, flat.numel() // 1_000_000)]
        for qq, v in zip(quantiles, torch.quantile(flat, q).tolist()):
            out[f"{name}_q{round(qq * 100):02d}"] = v
    return out


def main() -> None:
    torch.set_num_threads(1)
    new_quantiles, points = a2c.rmsprop_quantiles, a2c.OPTIMIZER_POINTS
    env = make_atari("Pong", 16, 0, backend="envpool")
    model = ActorCritic(env.num_actions, in_channels=4)
    cfg = a2c.A2CConfig(num_envs=16)
    opt = a2c.make_optimizer(model.parameters(), cfg)
    a2c.train_agent(env, model, opt, 400, cfg=cfg)                      # warm-up
    sps = {"none": [], "old": [], "new": []}
    for _ in range(3):
        for k in sps:
            a2c.OPTIMIZER_POINTS = 0 if k == "none" else points
            a2c.rmsprop_quantiles = old_quantiles if k == "old" else new_quantiles
            sps[k].append(round(a2c.train_agent(env, model, opt, 2000, cfg=cfg).sps))
    print(sps)


if __name__ == "__main__":
    main()
