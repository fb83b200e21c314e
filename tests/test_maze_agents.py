"""Maze agents: recurrent cells, Warp-RNN gate structure and fused BPTT, the A2C loss, the rollout."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from agents.maze_a2c import MazeA2CConfig, discounted_returns, maze_a2c_loss, rollout, rollout_loss
from agents.recurrent import (
    MODELS,
    LSTMActorCritic,
    ModulatedPlasticRNN,
    RecurrentConfig,
    RetroactivePlasticRNN,
    TanhRNN,
    WarpLSTM,
    WarpRNN,
    build_model,
)
from envs.maze import MazeConfig
from envs.maze_vector import MazeBatch

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------- loss


def test_discounted_returns_hand_worked():
    r = torch.tensor([[1.0, 0.0], [0.0, 10.0], [2.0, 0.0]])
    R = discounted_returns(r, 0.9)
    # R_2 = r_2; R_1 = r_1 + 0.9 R_2; R_0 = r_0 + 0.9 R_1
    expected = [[1 + 0.9 * 0 + 0.81 * 2, 0 + 0.9 * 10], [0 + 0.9 * 2, 10.0], [2.0, 0.0]]
    torch.testing.assert_close(R, torch.tensor(expected))


def _hand_loss(logits, values, actions, rewards, element0):
    """The protocol's loss with Python floats, term by term."""
    T, B = len(rewards), len(rewards[0])
    R = [[0.0] * B for _ in range(T)]
    for b in range(B):
        acc = 0.0
        for t in reversed(range(T)):
            acc = rewards[t][b] + 0.9 * acc
            R[t][b] = acc
    total = 0.0
    for t in range(T):
        pol = val = ent = 0.0
        for b in range(B):
            z = [math.exp(v) for v in logits[t][b]]
            p = [v / sum(z) for v in z]
            V = values[t][0] if element0 else values[t][b]
            A = R[t][b] - V
            pol += -math.log(p[actions[t][b]]) * A
            val += A * A
            ent += sum(q * q for q in p)
        total += (pol + 0.1 * val + 0.03 * ent) / B
    return total / T


@pytest.mark.parametrize("baseline", ["per_element", "element0"])
def test_a2c_loss_matches_hand_computation(baseline):
    logits = [[[0.1, -0.3, 0.5, 0.0], [1.0, 0.0, 0.0, -1.0]],
              [[0.0, 0.0, 0.0, 0.0], [-0.5, 0.2, 0.3, 0.1]],
              [[2.0, 1.0, 0.0, -1.0], [0.3, 0.3, -0.2, 0.0]]]  # fmt: skip
    values = [[0.5, 2.0], [1.0, -1.0], [0.0, 3.0]]
    actions = [[2, 0], [1, 3], [0, 1]]
    rewards = [[0.0, 10.0], [0.0, 0.0], [10.0, -0.05]]
    lg = torch.tensor(logits, requires_grad=True)
    v = torch.tensor(values, requires_grad=True)
    loss = maze_a2c_loss(lg, v, torch.tensor(actions), torch.tensor(rewards), MazeA2CConfig(value_baseline=baseline))
    expected = _hand_loss(logits, values, actions, rewards, element0=baseline == "element0")
    assert loss.total.item() == pytest.approx(expected, rel=1e-5)
    loss.total.backward()
    # The policy term stops the gradient at A, so ∂L/∂V comes from 0.1 · mean A² alone.
    R = discounted_returns(torch.tensor(rewards), 0.9)
    if baseline == "per_element":
        expected_grad = 0.1 * 2 * (v.detach() - R) / 6
    else:
        expected_grad = torch.zeros(3, 2)
        expected_grad[:, 0] = 0.1 * 2 * (v.detach()[:, :1] - R).sum(1) / 6
    torch.testing.assert_close(v.grad, expected_grad)


def test_loss_config_rejects_unknown_baseline():
    with pytest.raises(ValueError):
        MazeA2CConfig(value_baseline="mean")


# ------------------------------------------------------------------------------------------- models


def _all_models():
    torch.manual_seed(0)
    return {name: build_model(name) for name in MODELS}


def test_parameter_groups_partition_every_model():
    for name, m in _all_models().items():
        task = {id(p) for p in m.task_parameters()}
        warp = {id(p) for p in m.warp_parameters()}
        assert task.isdisjoint(warp), name
        assert task | warp == {id(p) for p in m.parameters()}, name
        assert (len(warp) > 0) == name.startswith("warp"), name
        assert {id(p) for p in m.policy_head.parameters()} <= task


def test_forward_step_shapes():
    x = torch.rand(3, 17)
    for name, m in _all_models().items():
        state = m.initial_state(3)
        logits, value, state = m.forward_step(x, state)
        assert logits.shape == (3, 4) and value.shape == (3,), name
        assert state[0].shape == (3, 100), name


def test_tanh_rnn_cell_formula():
    torch.manual_seed(0)
    m = TanhRNN()
    with torch.no_grad():
        m.bias.normal_()
    x, h = torch.rand(2, 17), torch.rand(2, 100)
    out, _ = m.cell(x, (h,))
    torch.testing.assert_close(out, torch.tanh(x @ m.weight_ih.T + h @ m.weight_hh.T + m.bias))
    # Orthogonal initialisation of the recurrent matrix.
    W = TanhRNN().weight_hh.detach()
    torch.testing.assert_close(W @ W.T, torch.eye(100), atol=1e-5, rtol=0)


def test_plastic_rnn_hebbian_trace_modulation_and_clip():
    m = ModulatedPlasticRNN(RecurrentConfig(obs_dim=2, hidden_size=2))
    W_in = np.array([[1.0, 0.5], [-0.5, 2.0]])
    W = np.array([[0.2, -0.1], [0.3, 0.1]])
    alpha = np.array([[1.0, 2.0], [-1.0, 0.5]])
    w = np.array([3.0, -2.0])
    with torch.no_grad():
        for p, v in ((m.weight_in, W_in), (m.weight, W), (m.alpha, alpha), (m.modulation, w)):
            p.copy_(torch.tensor(v))
    xs = [np.array(v) for v in ([1.0, 1.0], [0.5, -1.0], [1.0, 0.0], [0.5, -1.0], [0.5, -1.0])]
    h, hebb = np.zeros(2), np.zeros((2, 2))
    clipped = 0
    state = m.initial_state(1)
    for x in xs:
        # Written out element by element: pre-activation, then the modulated, clipped Hebbian update.
        new_h = np.zeros(2)
        for i in range(2):
            pre = sum(W_in[i, j] * x[j] for j in range(2))
            pre += sum((W[i, j] + alpha[i, j] * hebb[i, j]) * h[j] for j in range(2))
            new_h[i] = math.tanh(pre)
        M = math.tanh(sum(w[i] * new_h[i] for i in range(2)))
        raw = [[hebb[i, j] + M * new_h[i] * h[j] for j in range(2)] for i in range(2)]
        clipped += sum(abs(v) > 1 for row in raw for v in row)
        hebb = np.array([[min(1.0, max(-1.0, v)) for v in row] for row in raw])
        h = new_h
        out, state = m.cell(torch.tensor(x, dtype=torch.float32)[None], state)
        np.testing.assert_allclose(out[0].detach().numpy(), h, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state[1].view(2, 2).detach().numpy(), hebb, rtol=1e-5, atol=1e-6)
    assert clipped >= 2  # the clip at ±1 was exercised (steps 4 and 5)


def test_retroactive_plastic_rnn_eligibility_trace_and_clip():
    """Hebb_t = clip(Hebb_{t−1} + M_t E_{t−1}), E_t = (1 − η) E_{t−1} + η h_t h_{t−1}ᵀ, written out by hand."""
    m = RetroactivePlasticRNN(RecurrentConfig(obs_dim=2, hidden_size=2))
    W_in = np.array([[1.0, 0.5], [-0.5, 2.0]])
    W = np.array([[0.2, -0.1], [0.3, 0.1]])
    alpha = np.array([[1.0, 2.0], [-1.0, 0.5]])
    w = np.array([3.0, -2.0])
    eta = 0.7
    with torch.no_grad():
        for p, v in ((m.weight_in, W_in), (m.weight, W), (m.alpha, alpha), (m.modulation, w), (m.eta, [eta])):
            p.copy_(torch.tensor(v))
    xs = [np.array(v) for v in ([1.0, 1.0], [0.5, -1.0], [1.0, 0.0], [0.5, -1.0], [0.5, -1.0], [1.0, 1.0])]
    h, hebb, trace = np.zeros(2), np.zeros((2, 2)), np.zeros((2, 2))
    clipped = 0
    state = m.initial_state(1)
    for x in xs:
        new_h = np.array([math.tanh(sum(W_in[i, j] * x[j] for j in range(2))
                                    + sum((W[i, j] + alpha[i, j] * hebb[i, j]) * h[j] for j in range(2)))
                          for i in range(2)])
        M = math.tanh(sum(w[i] * new_h[i] for i in range(2)))
        raw = [[hebb[i, j] + M * trace[i, j] for j in range(2)] for i in range(2)]     # the trace before this step
        clipped += sum(abs(v) > 1 for row in raw for v in row)
        hebb = np.array([[min(1.0, max(-1.0, v)) for v in row] for row in raw])
        trace = np.array([[(1 - eta) * trace[i, j] + eta * new_h[i] * h[j] for j in range(2)] for i in range(2)])
        h = new_h
        out, state = m.cell(torch.tensor(x, dtype=torch.float32)[None], state)
        np.testing.assert_allclose(out[0].detach().numpy(), h, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state[1].view(2, 2).detach().numpy(), hebb, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state[2].view(2, 2).detach().numpy(), trace, rtol=1e-5, atol=1e-6)
    assert clipped >= 1  # the clip at ±1 was exercised
    assert any(p is m.eta for p in m.task_parameters())  # η is learned


def _force_warp_gates(model, signs: list[float]):
    """Make every warp gate of chunk k exactly signs[k] (±1 or 0): the adaptation LSTM's output is driven to a
    positive constant (zero weights, saturated i/g/o biases), and the projection rows give ±large or 0."""
    lstm, proj = model.warp.lstm, model.warp.projection
    K = lstm.hidden_size
    with torch.no_grad():
        lstm.weight_ih.zero_()
        lstm.weight_hh.zero_()
        lstm.bias_hh.zero_()
        lstm.bias_ih.zero_()
        lstm.bias_ih[:K] = 20.0  # i ≈ 1
        lstm.bias_ih[2 * K : 3 * K] = 20.0  # g ≈ 1, so c ≥ 1 and z = o·tanh(c) ≥ 0.76
        lstm.bias_ih[3 * K :] = 20.0  # o ≈ 1
        rows = []
        for size, s in zip(model.warp.gate_sizes, signs):
            rows.append(torch.full((size, K), 10.0 * s))  # |P z| ≥ 760: tanh is exactly ±1 in float32
        proj.weight.copy_(torch.cat(rows))


def _warp_rnn_with_bias():
    torch.manual_seed(1)
    m = WarpRNN()
    with torch.no_grad():
        m.bias.uniform_(-0.5, 0.5)
    return m


def test_warp_rnn_with_unit_gates_is_the_plain_rnn_on_the_same_weights():
    m = _warp_rnn_with_bias()
    _force_warp_gates(m, [1, 1, 1, 1, 1])
    plain = TanhRNN()
    with torch.no_grad():
        plain.weight_ih.copy_(m.weight_ih)
        plain.weight_hh.copy_(m.weight_hh)
        plain.bias.copy_(m.bias)
    xs = torch.rand(6, 4, 17)
    s_w, s_p = m.initial_state(4), plain.initial_state(4)
    for t in range(6):
        h_w, s_w = m.cell(xs[t], s_w)
        h_p, s_p = plain.cell(xs[t], s_p)
        torch.testing.assert_close(h_w, h_p)
    assert h_p.abs().sum() > 1.0  # not a trivially zero trajectory


@pytest.mark.parametrize("signs", [[-1, 1, 1, 1, 1], [1, -1, 1, 1, 1], [1, 1, -1, 1, 1], [1, 1, 1, -1, 1],
                                   [1, 1, 1, 1, -1], [1, 1, 0, 1, 1], [0, 0, 0, 0, 0]])  # fmt: skip
def test_warp_rnn_each_gate_multiplies_its_own_factor(signs):
    s_x, s_h, s_i, s_hh, s_b = signs
    m = _warp_rnn_with_bias()
    _force_warp_gates(m, signs)
    xs = torch.rand(5, 3, 17)
    state = m.initial_state(3)
    h_ref = torch.zeros(3, 100)
    for t in range(5):
        h, state = m.cell(xs[t], state)
        with torch.no_grad():  # tanh((W_ih(x·p_x))·p_i + (W_hh(h·p_h))·p_hh + b·p_b) with constant gates
            h_ref = torch.tanh(
                s_i * ((s_x * xs[t]) @ m.weight_ih.T) + s_hh * ((s_h * h_ref) @ m.weight_hh.T) + s_b * m.bias
            )
        torch.testing.assert_close(h, h_ref)


def test_warp_lstm_with_unit_gates_is_an_lstm_on_the_same_weights():
    torch.manual_seed(2)
    m = WarpLSTM()
    with torch.no_grad():
        m.bias.uniform_(-0.5, 0.5)
    _force_warp_gates(m, [1, 1, 1, 1, 1])
    xs = torch.rand(5, 3, 17)
    state = m.initial_state(3)
    h_ref, c_ref = torch.zeros(3, 100), torch.zeros(3, 100)
    for t in range(5):
        h, state = m.cell(xs[t], state)
        h_ref, c_ref = torch.lstm_cell(xs[t], (h_ref, c_ref), m.weight_ih, m.weight_hh, m.bias)
        torch.testing.assert_close(h, h_ref)


def _grads(model):
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}


@pytest.mark.parametrize("model", [WarpRNN, WarpLSTM])
def test_fused_warp_unroll_matches_autograd_through_cell(model):
    """The fused unroll's hidden states and every parameter's gradient (agents.warp_rnn_fused: Warp-RNN and
    Warp-LSTM) against autograd through the model's own ``cell``."""
    torch.manual_seed(3)
    m = model()
    with torch.no_grad():
        m.warp.projection.weight.mul_(4)  # gates away from 0, so every path carries gradient
        m.bias.normal_()
    T, B = 9, 4
    xs, w = torch.rand(T, B, 17), torch.randn(T, B, 100)
    state, hs = m.initial_state(B), []
    for t in range(T):
        h, state = m.cell(xs[t], state)
        hs.append(h)
    H_ref = torch.stack(hs)
    (H_ref * w).sum().backward()
    g_ref = _grads(m)
    m.zero_grad()
    for _ in range(2):  # the second unroll reuses the first one's workspace
        m.zero_grad()
        unroll = m.fused_unroll(B, T)
        for t in range(T):
            unroll.step(xs[t])
        H = unroll.finish()
        (H * w).sum().backward()
        torch.testing.assert_close(H, H_ref, atol=1e-5, rtol=1e-5)
        for name, g in _grads(m).items():
            if g_ref[name] is None:
                assert g is None, name
            else:
                torch.testing.assert_close(g, g_ref[name], atol=1e-5, rtol=1e-4, msg=name)
    with pytest.raises(RuntimeError):
        H.sum().backward()  # one backward pass per unroll
    # The reusable workspace is not model state: not in the state dict, not copied with the model.
    assert m.fused_slot.workspace is not None
    assert copy.deepcopy(m).fused_slot.workspace is None
    assert all("workspace" not in k for k in m.state_dict())


# ------------------------------------------------------------------------------------------- rollout


def _small_batch(B=4, T=20, seed=0):
    return MazeBatch(B, MazeConfig(episode_length=T), seed=seed)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_rollout_shapes_returns_and_gradient_flow(name):
    torch.manual_seed(0)
    m = build_model(name)
    r = rollout(m, _small_batch(), generator=torch.Generator().manual_seed(0))
    assert r.logits.shape == (20, 4, 4) and r.values.shape == (20, 4) and r.actions.shape == (20, 4)
    np.testing.assert_allclose(r.episode_returns, r.rewards.sum(0).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(r.observations[0, :, 10].numpy(), 1.0)  # bias input
    np.testing.assert_array_equal(r.observations[1:, :, 13:].argmax(-1).numpy(), r.actions[:-1].numpy())
    rollout_loss(r).total.backward()
    for group in (m.task_parameters(), m.warp_parameters()):
        for p in group:
            assert p.grad is not None and torch.isfinite(p.grad).all()
    assert all(p.grad.abs().sum() > 0 for p in m.warp_parameters())  # the warp receives the task loss


@pytest.mark.parametrize("model", [WarpRNN, WarpLSTM])
def test_fused_and_unfused_rollouts_agree(model):
    torch.manual_seed(0)
    m = model()
    results = []
    for fused in (True, False):
        m.zero_grad()
        r = rollout(m, _small_batch(T=30, seed=4), generator=torch.Generator().manual_seed(9), fused=fused)
        rollout_loss(r).total.backward()
        results.append((r, _grads(m)))
    (r1, g1), (r2, g2) = results
    torch.testing.assert_close(r1.actions, r2.actions)
    torch.testing.assert_close(r1.logits, r2.logits, atol=1e-5, rtol=1e-5)
    for name in g1:
        if g1[name] is not None:
            torch.testing.assert_close(g1[name], g2[name], atol=1e-5, rtol=1e-3, msg=name)


def test_rollout_is_seeded():
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        m = TanhRNN()
        r = rollout(m, _small_batch(seed=5), generator=torch.Generator().manual_seed(5))
        outs.append((r.actions, r.episode_returns))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


def test_rollout_samples_actions_from_the_policy_softmax():
    m = LSTMActorCritic()
    target = torch.tensor([1.0, 0.0, -1.0, 0.5])
    with torch.no_grad():
        m.policy_head.weight.zero_()
        m.policy_head.bias.copy_(target)
    r = rollout(m, MazeBatch(50, MazeConfig(episode_length=100), seed=0), generator=torch.Generator().manual_seed(1))
    n = r.actions.numel()
    freq = torch.bincount(r.actions.flatten(), minlength=4).double() / n
    p = torch.softmax(target.double(), 0)
    assert ((freq - p).abs() < 4 * torch.sqrt(p * (1 - p) / n)).all(), (freq, p)


def test_rollout_rejects_length_mismatch():
    with pytest.raises(ValueError):
        rollout(TanhRNN(), _small_batch(T=20), T=200)
