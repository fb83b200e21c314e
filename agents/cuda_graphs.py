"""CUDA graphs for A2C (``A2CConfig.cuda_graphs``): the acting forward pass and the update each become one
graph replay instead of tens of small kernel launches, which at 16 envs and a 5-step unroll is most of a GPU
update's time (docs/RESULTS.md: the GPU waits on launches).

A graph replays the kernels its capture recorded on the tensors it recorded, so everything it reads or writes
must stay at fixed addresses: the rollout's buffers (allocated once per collector), the parameters, their
gradients and the optimiser's state. What is captured, and what stays eager:

- acting: the network's forward pass on one rollout row (one graph per row and env group, each reading its own
  row) and the bootstrap pass on the last observations. Sampling stays eager: it draws from the task's generator
  exactly as the eager path does (a handful of kernels), and the sampled actions come back to the host once per
  step — the rollout's only sync.
- the update: the A2C loss over the rollout, its backward and the gradient clipping; and the optimiser step when
  no meta-learner watches it (RMSpropTF is capturable as written; torch's RMSprop is built with
  ``capturable=True``). A watched optimiser steps eagerly after the replay, since the watch's hooks are Python
  and would not run on a replay. They are handed what the eager path hands them: a copy of the loss and fresh
  gradient tensors (copies of the graph's), since the graph overwrites its own outputs in place on the next
  replay without bumping autograd's version counters (Leap holds gradients by reference across a step).
- the first update of a run is eager: it creates the optimiser's state, which must exist before a capture, and
  lets cuDNN and cuBLAS settle their kernels; the second captures, and every later one replays.

Before each capture the function runs twice on a side stream (torch.cuda.graphs' warm-up rule) with no effect
on the run: forward passes, and backward passes whose gradients are dropped before the capture (the optimiser
is not stepped). The graphed update always runs the loss's own forward pass over the rollout, so
``reuse_forward`` does not apply. Runs with and without graphs compute the same kernels on the same inputs and
agree to float tolerance (tests/test_atari_graphs.py, CUDA only). CPU runs refuse the option.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable

import torch
from torch import Tensor

from metarl.seam import NULL_WATCH

WARM_UP = 2          # runs of a function on a side stream before its capture


class Graphs:
    """Captured CUDA graphs by key. ``run(key, fn)``: the first call of a key warms ``fn`` up and captures it;
    every call (the first included) replays the graph and returns the outputs ``fn`` returned at capture —
    static tensors, rewritten by each replay. ``before`` runs before each warm-up run and before the capture."""

    def __init__(self, device: torch.device) -> None:
        if torch.device(device).type != "cuda":
            raise ValueError(f"a2c.cuda_graphs needs the model on a CUDA device, not {device}")
        self._graphs: dict[Hashable, tuple[Any, Any]] = {}

    def run(self, key: Hashable, fn: Callable[[], Any], warm_up: Callable[[], Any] | None = None,
            before: Callable[[], None] | None = None) -> Any:
        if key not in self._graphs:
            self._graphs[key] = self.capture(fn, warm_up or fn, before)
        graph, out = self._graphs[key]
        graph.replay()
        return out

    @staticmethod
    def capture(fn: Callable[[], Any], warm_up: Callable[[], Any], before: Callable[[], None] | None) -> tuple:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(WARM_UP):
                if before is not None:
                    before()
                warm_up()
        torch.cuda.current_stream().wait_stream(stream)
        if before is not None:
            before()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        return graph, out


def graphed_step(graphs: Graphs, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[], tuple[Tensor, dict[str, Tensor]]], clip_fn: Callable[[], Tensor],
                 watch=NULL_WATCH) -> tuple[list[str], Tensor]:
    """One update through the graph ``"update"``: ``loss_fn()`` (the loss, scalar or one per agent, and its
    ``losses/*`` parts), backward, ``clip_fn()`` (the gradient norm, after clipping in place), then the step —
    in the graph without a watch, eagerly after it with one (module docstring). Returns the ``losses/*`` names
    and their values (a copy), as ``agents.a2c.a2c_step`` and ``agents.batched_a2c.batched_a2c_step`` do."""
    in_graph = watch is NULL_WATCH

    def update(step: bool) -> tuple[Tensor, Tensor, list[str], list[Tensor]]:
        loss, parts = loss_fn()
        (loss if loss.dim() == 0 else loss.sum()).backward()
        parts["grad_norm"] = clip_fn()
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if step:
            optimizer.step()
        return loss.detach(), torch.stack([v.float() for v in parts.values()], -1), list(parts), grads

    loss, values, names, grads = graphs.run("update", lambda: update(in_graph), warm_up=lambda: update(False),
                                            before=lambda: optimizer.zero_grad(set_to_none=True))
    if not in_graph:
        with torch.no_grad():
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            for p, g in zip(params, grads):
                p.grad = g.clone()          # fresh tensors, as the eager path's zero_grad(set_to_none=True) gives
        watch.report(loss.clone())
        optimizer.step()
    return [f"losses/{k}" for k in names], values.clone()
