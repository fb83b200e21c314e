"""Fused unroll of the plastic RNNs (agents.plastic_rnn_fused): hidden states and every parameter gradient equal
autograd through the cell (``plastic_step``), simple and retroactive, single and seed-stacked, with the
Hebbian clip inactive and active, pre-clip values exactly on the bounds passing gradient as torch.clamp's do;
a maze rollout + A2C loss gives the same gradients fused and unfused."""

from __future__ import annotations

import copy

import pytest
import torch

from agents.maze_a2c import rollout, rollout_loss, rollout_seeds
from agents.plastic_rnn_fused import PlasticRNNUnroll
from agents.recurrent import RecurrentConfig, build_model
from agents.seed_batched import build_seed_batched
from envs.maze import MazeConfig
from envs.maze_vector import MazeBatch, SeedMazeBatch

torch.set_num_threads(1)
KINDS = ["plastic-rnn", "plastic-rnn-retroactive"]
SEEDS = [5, 2, 7]


def _model(name: str, H: int, seeds: list[int] | None, saturate: bool, dtype=torch.float64, scale: float = 0.4):
    config = RecurrentConfig(hidden_size=H)
    if seeds:
        m = build_seed_batched(name, config, seeds)
    else:
        torch.manual_seed(11)
        m = build_model(name, config)
    m = m.to(dtype)
    torch.manual_seed(0)
    with torch.no_grad():
        if saturate:  # strong modulation: Hebb reaches ±1 within the unroll (but no chaos, which would
            m.alpha.normal_().mul_(0.3)  # amplify rounding differences beyond any tolerance)
            m.modulation.normal_().mul_(4.0)
            m.weight.normal_().mul_(scale)
            if hasattr(m, "eta"):
                m.eta.fill_(0.9)
        else:
            m.weight.normal_().mul_(0.3)  # lively enough that every term carries gradient,
            m.modulation.mul_(0.2)  # modulation weak enough that no trace entry reaches ±1
    return m


def _grads(model) -> dict[str, torch.Tensor | None]:
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}


def _reference(m, xs, w):
    """Autograd through the cell: hidden states, parameter gradients of Σ h ⊙ w, the traces' saturation."""
    T, *lead, _ = xs.shape
    m.zero_grad()
    state = tuple(s.to(xs.dtype) for s in m.initial_state(lead[-1]))  # (initial_state is float32)
    hs, saturated = [], 0.0
    for t in range(T):
        h, state = m.cell(xs[t], state)
        hs.append(h)
        saturated += float((state[1].detach().abs() == 1).double().mean()) / T  # share of entries at ±1
    H = torch.stack(hs)
    (H * w).sum().backward()
    return H.detach(), _grads(m), saturated


def _fused(m, xs, w, unroll=None):
    T, *lead, _ = xs.shape
    m.zero_grad()
    unroll = unroll or PlasticRNNUnroll(m, lead[-1], T)
    for t in range(T):
        unroll.step(xs[t])
    H = unroll.finish()
    (H * w).sum().backward()
    return H.detach(), _grads(m), H


def _check(m, H, g, H_ref, g_ref, rtol, atol):
    torch.testing.assert_close(H, H_ref, rtol=rtol, atol=atol)
    cell = {n for n, _ in m.named_parameters() if not n.startswith(("policy_head", "value_head"))}
    assert cell == {"weight_in", "weight", "alpha", "modulation"} | ({"eta"} if hasattr(m, "eta") else set())
    for name in cell:
        assert g_ref[name] is not None and float(g_ref[name].abs().max()) > 0, name   # the term is exercised
        scale = float(g_ref[name].abs().max())
        torch.testing.assert_close(g[name], g_ref[name], rtol=rtol, atol=atol * scale, msg=name)


@pytest.mark.parametrize("saturate", [False, True], ids=["clip-inactive", "clip-active"])
@pytest.mark.parametrize("seeded", [False, True], ids=["single", "seeds"])
@pytest.mark.parametrize("name", KINDS)
def test_fused_plastic_unroll_matches_autograd_float64(name, seeded, saturate):
    T, B, H = 30, 4, 12
    seeds = SEEDS if seeded else None
    m = _model(name, H, seeds, saturate)
    lead = (len(SEEDS), B) if seeded else (B,)
    gen = torch.Generator().manual_seed(3)
    xs = torch.rand(T, *lead, 17, generator=gen, dtype=torch.float64)
    w = torch.randn(T, *lead, H, generator=gen, dtype=torch.float64)
    H_ref, g_ref, saturated = _reference(m, xs, w)
    if saturate:  # the clip really acts, on a part of the trace only
        assert 0.1 < saturated < 0.9, saturated
    else:
        assert saturated == 0.0
    H_f, g_f, _ = _fused(m, xs, w)
    _check(m, H_f, g_f, H_ref, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seeded", [False, True], ids=["single", "seeds"])
@pytest.mark.parametrize("name", KINDS)
def test_fused_plastic_unroll_float32_is_the_models_hook(name, seeded):
    """The models' own ``fused_unroll`` (float32, CPU), twice (the second reuses the workspace), against the
    cell in float32; one backward per unroll; the workspace is not model state; no fused path off float32."""
    T, B, H = 30, 4, 16
    m = _model(name, H, SEEDS[:2] if seeded else None, saturate=True, dtype=torch.float32, scale=0.15)
    lead = (2, B) if seeded else (B,)
    gen = torch.Generator().manual_seed(4)
    xs, w = torch.rand(T, *lead, 17, generator=gen), torch.randn(T, *lead, H, generator=gen)
    H_ref, g_ref, saturated = _reference(m, xs, w)
    assert saturated > 0.1
    for _ in range(2):
        unroll = m.fused_unroll(B, T)
        assert isinstance(unroll, PlasticRNNUnroll)
        H_f, g_f, out = _fused(m, xs, w, unroll)
        _check(m, H_f, g_f, H_ref, g_ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError):
        out.sum().backward()  # one backward pass per unroll
    assert m.fused_slot.workspace is not None
    assert copy.deepcopy(m).fused_slot.workspace is None
    assert all("workspace" not in k for k in m.state_dict())
    assert m.to(torch.float64).fused_unroll(B, T) is None


def _rollout_grads(m, episodes, fused):
    m.zero_grad()
    r = episodes(fused)
    rollout_loss(r).total.sum().backward()
    return r, _grads(m)


@pytest.mark.parametrize("seeded", [False, True], ids=["single", "seeds"])
@pytest.mark.parametrize("name", KINDS)
def test_fused_and_unfused_rollouts_agree_for_plastic_rnns(name, seeded):
    T, B = 30, 4
    config, maze = RecurrentConfig(hidden_size=32), MazeConfig(episode_length=T)
    if seeded:
        ids = SEEDS[:2]
        m = build_seed_batched(name, config, ids)
        def episodes(fused):
            return rollout_seeds(m, SeedMazeBatch(ids, B, maze), generators=[torch.Generator().manual_seed(9 + s)
                                                                             for s in ids], fused=fused)
    else:
        torch.manual_seed(0)
        m = build_model(name, config)
        def episodes(fused):
            return rollout(m, MazeBatch(B, maze, seed=4), generator=torch.Generator().manual_seed(9), fused=fused)
    with torch.no_grad():  # plasticity strong enough that the traces matter (and saturate) within 30 steps
        m.alpha.mul_(20.0)
        m.modulation.mul_(10.0)
    assert m.fused_unroll(B, T) is not None
    r1, g1 = _rollout_grads(m, episodes, fused=True)
    clipped = float((m.fused_slot.workspace.Q[: T - 1].abs() > 1).double().mean())  # the pre-clip traces
    assert clipped > 0.01, clipped
    r2, g2 = _rollout_grads(m, episodes, fused=False)
    torch.testing.assert_close(r1.actions, r2.actions)
    torch.testing.assert_close(r1.logits, r2.logits, atol=1e-5, rtol=1e-5)
    for n in g1:
        assert g1[n] is not None and g2[n] is not None, n
        torch.testing.assert_close(g1[n], g2[n], atol=1e-5 * float(g2[n].abs().max()), rtol=1e-3, msg=n)


@pytest.mark.parametrize("name", KINDS)
def test_clip_bounds_pass_gradient_as_torch_clamp_does(name):
    """Pre-clip values exactly ±1 pass gradient (torch.clamp's closed bounds). Built so they occur: unit 0
    follows input 0 alone and is the only unit the modulator reads; input 0 is on for 12 steps (the traces
    saturate), then off, so M_t = 0 exactly and Q_t = Hebb_{t−1}, whose saturated entries are exactly ±1."""
    T, B, H = 30, 3, 6
    m = _model(name, H, None, saturate=True)
    with torch.no_grad():
        for p in (m.weight_in, m.weight, m.alpha):
            p[0] = 0.0
        m.weight_in[0, 0] = 3.0
        m.modulation.zero_()[0] = 4.0
        m.weight_in[1:, 0] = 0.0  # the other units do not see input 0, so their activity continues alike
    gen = torch.Generator().manual_seed(5)
    xs = torch.rand(T, B, 17, generator=gen, dtype=torch.float64)
    xs[:, :, 0] = (torch.arange(T) < 12).double().unsqueeze(1)
    w = torch.randn(T, B, H, generator=gen, dtype=torch.float64)
    H_ref, g_ref, _ = _reference(m, xs, w)
    H_f, g_f, _ = _fused(m, xs, w)
    Q = m.fused_slot.workspace.Q[12 : T - 1]
    assert int((Q.abs() == 1).sum()) > 20  # pre-clip values on the bounds
    _check(m, H_f, g_f, H_ref, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T", [1, 2, 3])
@pytest.mark.parametrize("name", KINDS)
def test_short_unrolls_and_frozen_parameters(name, T):
    """Unrolls of 1–3 steps (the first and last steps' special cases meet) and parameters that need no
    gradient: those get none, the others autograd's (a parameter autograd leaves without a gradient — w at
    T = 1, η at T ≤ 2, which reach no output yet — gets zeros)."""
    B, H = 3, 8
    gen = torch.Generator().manual_seed(6)
    xs = torch.rand(T, B, 17, generator=gen, dtype=torch.float64)
    w = torch.randn(T, B, H, generator=gen, dtype=torch.float64)
    for frozen in ((), ("alpha", "weight_in", "eta"), ("weight", "modulation")):
        m = _model(name, H, None, saturate=True)
        for n, p in m.named_parameters():
            p.requires_grad_(n not in frozen)
        H_ref, g_ref, _ = _reference(m, xs, w)
        H_f, g_f, _ = _fused(m, xs, w)
        torch.testing.assert_close(H_f, H_ref, rtol=1e-12, atol=1e-14)
        for n, p in m.named_parameters():
            if n.startswith(("policy_head", "value_head")):
                continue                                   # the heads are not the unroll's
            if n in frozen:
                assert g_f[n] is None, n
            elif g_ref[n] is None:
                assert g_f[n] is not None and not g_f[n].any(), n
            else:
                torch.testing.assert_close(g_f[n], g_ref[n], rtol=1e-10, atol=1e-12, msg=n)


@pytest.mark.parametrize("name", KINDS)
def test_two_unrolls_alive_at_once_and_in_place_updates(name):
    """A second unroll while the first awaits its backward builds its own workspace and leaves the model's
    slot to the first; both backward passes are right. A parameter changed in place between an unroll's
    steps and its backward is refused (the forward holds detached views of the parameters)."""
    T, B, H = 10, 3, 8
    m = _model(name, H, None, saturate=True)
    gen = torch.Generator().manual_seed(7)
    xs = torch.rand(T, B, 17, generator=gen, dtype=torch.float64)
    w = torch.randn(T, B, H, generator=gen, dtype=torch.float64)
    H_ref, g_ref, _ = _reference(m, xs, w)
    first, second = PlasticRNNUnroll(m, B, T), PlasticRNNUnroll(m, B, T)
    assert m.fused_slot.workspace is first.ws and second.ws is not first.ws
    for unroll in (second, first):
        H_f, g_f, _ = _fused(m, xs, w, unroll)
        _check(m, H_f, g_f, H_ref, g_ref, rtol=1e-10, atol=1e-12)
    unroll = PlasticRNNUnroll(m, B, T)
    for t in range(T):
        unroll.step(xs[t])
    out = unroll.finish()
    with torch.no_grad():
        m.alpha.mul_(0.5)
    with pytest.raises(RuntimeError, match="modified in place"):
        (out * w).sum().backward()
    assert not m.fused_slot.workspace.in_use          # released: the next unroll can take it
