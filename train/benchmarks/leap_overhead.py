"""`metarl bench leap-overhead`: a 1,000-step inner loop of the Omniglot conv net (4×[conv 3×3 64, pool,
BN, ReLU], 28×28, batch 20) with and without Leap attached, alternating in one process."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metarl import NULL_WATCH, Leap, LeapConfig
from train.tasks.omniglot import OmniConv

from ._common import median, parser, timed_both, torch_threads


def inner_loop(model: torch.nn.Module, steps: int, x: torch.Tensor, y: torch.Tensor, meta: Leap | None) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if meta is not None:
        meta.load_init(model)
    watch = meta.watch(model, opt) if meta is not None else NULL_WATCH
    with watch:
        for i in range(steps):
            loss = F.cross_entropy(model(x[i % len(x)]), y[i % len(y)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            watch.report(loss)
            opt.step()
        watch.finish(loss.detach())


def run(argv: list[str]) -> dict:
    p = parser(__doc__, rounds=9)    # rounds on this shared VM differ by ±5 %: a 3 % bound needs several
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=20)
    args = p.parse_args(argv)
    with torch_threads(args.threads) as threads:
        g = torch.Generator().manual_seed(0)
        model = OmniConv(num_classes=20, generator=g).to(memory_format=torch.channels_last)   # as the adapter builds it
        x = torch.rand(16, args.batch, 1, 28, 28, generator=g)
        y = torch.randint(0, 20, (16, args.batch), generator=g)
        meta = Leap(model, LeapConfig(p=1, loss=True, stabilizer=True))
        inner_loop(model, 50, x, y, None)          # warm-up
        inner_loop(model, 50, x, y, meta)
        plain, leap = [], []
        for r in range(args.rounds):
            plain.append(timed_both(lambda: inner_loop(model, args.steps, x, y, None)))
            leap.append(timed_both(lambda: inner_loop(model, args.steps, x, y, meta)))
            print(f"round {r}: without Leap {plain[-1][0]:.3f} s ({plain[-1][1]:.3f} s CPU), "
                  f"with Leap {leap[-1][0]:.3f} s ({leap[-1][1]:.3f} s CPU)")
    params = sum(p.numel() for p in model.parameters())
    wall = [median([t[0] for t in xs]) for xs in (plain, leap)]
    cpu = [median([t[1] for t in xs]) for xs in (plain, leap)]
    out = {"steps": args.steps, "batch": args.batch, "params": params, "threads": threads, "rounds": args.rounds,
           "without_leap_s": wall[0], "with_leap_s": wall[1], "ratio": wall[1] / wall[0],
           "without_leap_cpu_s": cpu[0], "with_leap_cpu_s": cpu[1], "cpu_ratio": cpu[1] / cpu[0]}
    print(f"Leap overhead: {out['ratio']:.4f}x wall, {out['cpu_ratio']:.4f}x CPU over {args.steps} steps "
          f"({params} parameters)")
    return out
