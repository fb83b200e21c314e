"""Warp layers: modules whose parameters φ are held fixed while a task adapts and are meta-learned by
the WarpGrad objective (docs/warpgrad.md §2).

Backpropagation through a warp layer multiplies the gradient of the task layer below it by the warp's
Jacobian, so warps precondition the task gradients without any change to the inner optimiser. Models
name their warp layers under one prefix (by default ``warps.``, e.g. ``self.warps = nn.ModuleList(...)``)
so :class:`metarl.warpgrad.WarpGrad` can tell φ from the task-adaptable θ by name.

Warp BatchNorm: the affine parameters of a BatchNorm inside a warp layer are warp parameters. Its running
statistics are ordinary model buffers, so ``MetaLearner.load_init`` resets them to their initial values at
the start of every task; the WarpGrad objective always runs the model in train mode (batch statistics).

Layers
- :class:`WarpConv2d` — the Omniglot warp: 3×3 convolution with "same" zero padding; optionally a
  BatchNorm, an activation, a residual connection (1×1 convolution on the skip path when the channel
  count changes) and a hidden convolution (two stacked convolutions).
- :class:`ChannelScale` — channel-wise scale and shift (FiLM-like, the weakest warp of the ablation).
- :class:`WarpLinear` — a linear warp for feature vectors (ω(z) = Ωz + c).
- :class:`ResidualMLPWarp` — z + W₂ tanh(W₁ z + b₁) + b₂ with 100 hidden units (continual sine).
- :func:`make_warp` — one factory for all of them.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
}

# The one registry of warp kinds (what make_warp builds): kind -> what it warps. "conv": a convolution on
# N×C×H×W feature maps (takes ``batch_norm``); "map": other feature-map warps; "vector": feature vectors;
# "any": shape-agnostic. Task configs offer the subsets below (plus their own "none": no warp layers).
WARP_REGISTRY: dict[str, str] = {
    "linear": "conv", "conv1x1": "conv", "scale": "map", "nonlinear": "conv", "residual": "conv",
    "linear_mlp": "vector", "residual_mlp": "vector", "identity": "any",
}
WARP_KINDS = tuple(WARP_REGISTRY)
CONV_WARP_KINDS = tuple(k for k, on in WARP_REGISTRY.items() if on == "conv")
MAP_WARP_KINDS = tuple(k for k, on in WARP_REGISTRY.items() if on in ("conv", "map"))
VECTOR_WARP_KINDS = tuple(k for k, on in WARP_REGISTRY.items() if on == "vector")
INITS = ("default", "identity")


def make_activation(name: str | None) -> nn.Module | None:
    if name is None or name == "none":
        return None
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of none, {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"unknown warp init {init!r}; choose one of {', '.join(INITS)}")


class WarpConv2d(nn.Module):
    """conv(k×k, same padding) [→ BN → act → conv] → [BN] → [+ skip(x)] → [act].

    With the defaults (no hidden layer, no BN, no residual, no activation) it is the linear 3×3 warp of
    the paper's main Omniglot result. ``init="identity"`` starts the warp at the identity map (Dirac
    kernel, zero bias) when the shapes allow it; with a residual connection it zeroes the last
    convolution instead, so the block starts as the skip path.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size: int = 3, *,
                 hidden_channels: int | None = None, activation: str | None = None, residual: bool = False,
                 batch_norm: bool = False, bias: bool = True, init: str = "default") -> None:
        super().__init__()
        _check_init(init)
        if kernel_size % 2 != 1:
            raise ValueError(f"warp kernel_size must be odd (same padding), got {kernel_size}")
        out_channels = out_channels or in_channels
        pad = kernel_size // 2
        layers: list[nn.Module] = []
        width = in_channels
        if hidden_channels:
            layers.append(nn.Conv2d(width, hidden_channels, kernel_size, padding=pad, bias=bias))
            if batch_norm:
                layers.append(nn.BatchNorm2d(hidden_channels))
            act = make_activation(activation)
            if act is not None:
                layers.append(act)
            width = hidden_channels
        layers.append(nn.Conv2d(width, out_channels, kernel_size, padding=pad, bias=bias))
        self.body = nn.Sequential(*layers)
        self.norm = nn.BatchNorm2d(out_channels) if batch_norm else None
        if residual:
            self.skip = nn.Identity() if in_channels == out_channels else \
                nn.Conv2d(in_channels, out_channels, 1, bias=False)
        else:
            self.skip = None
        self.act = make_activation(activation)
        if init == "identity":
            self._identity_init(in_channels, out_channels, hidden_channels)

    @torch.no_grad()
    def _identity_init(self, c_in: int, c_out: int, hidden: int | None) -> None:
        last = self.body[-1]
        if self.skip is not None:
            last.weight.zero_()
            if last.bias is not None:
                last.bias.zero_()
            return
        if hidden or c_in != c_out:
            raise ValueError("init='identity' needs equal in/out channels and no hidden layer (or residual=True)")
        nn.init.dirac_(last.weight)
        if last.bias is not None:
            last.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        if self.norm is not None:
            y = self.norm(y)
        if self.skip is not None:
            y = y + self.skip(x)
        if self.act is not None:
            y = self.act(y)
        return y


class ChannelScale(nn.Module):
    """y = γ ⊙ x + β per channel (dimension 1); starts at the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.view(shape) + self.shift.view(shape)


class WarpLinear(nn.Module):
    """ω(z) = Ωz (+ c): a linear warp on feature vectors; ``init="identity"`` sets Ω = I, c = 0."""

    def __init__(self, features: int, out_features: int | None = None, *, bias: bool = True,
                 init: str = "default") -> None:
        super().__init__()
        _check_init(init)
        out_features = out_features or features
        self.linear = nn.Linear(features, out_features, bias=bias)
        if init == "identity":
            if out_features != features:
                raise ValueError("init='identity' needs out_features == features")
            with torch.no_grad():
                self.linear.weight.copy_(torch.eye(features))
                if bias:
                    self.linear.bias.zero_()

    def forward(self, z: Tensor) -> Tensor:
        return self.linear(z)


class ResidualMLPWarp(nn.Module):
    """z + W₂ act(W₁ z + b₁) + b₂ — the continual-sine warp block (2 layers, 100 hidden, tanh).

    ``init="identity"`` zeroes the second layer so the block starts as the identity map."""

    def __init__(self, features: int, hidden: int = 100, *, activation: str = "tanh",
                 init: str = "default") -> None:
        super().__init__()
        _check_init(init)
        act = make_activation(activation)
        self.inner = nn.Linear(features, hidden)
        self.act = act if act is not None else nn.Identity()
        self.outer = nn.Linear(hidden, features)
        if init == "identity":
            with torch.no_grad():
                self.outer.weight.zero_()
                self.outer.bias.zero_()

    def forward(self, z: Tensor) -> Tensor:
        return z + self.outer(self.act(self.inner(z)))


def make_warp(kind: str, channels: int, out_channels: int | None = None, *, activation: str | None = None,
              batch_norm: bool = False, hidden: int | None = None, init: str = "default") -> nn.Module:
    """One warp layer of ``kind`` over ``channels`` features:

    ============== =====================================================================================
    ``linear``      3×3 conv, same padding, no activation / BN / residual (the paper's Omniglot default)
    ``conv1x1``     1×1 conv
    ``scale``       channel-wise scale and shift (FiLM-like)
    ``nonlinear``   3×3 conv + activation (default ReLU)
    ``residual``    3×3 conv + residual (1×1 conv on the skip when channels change) + activation (ReLU)
    ``linear_mlp``  Ωz + c on feature vectors
    ``residual_mlp`` z + W₂ tanh(W₁ z) on feature vectors, ``hidden`` units (default 100)
    ``identity``    no warp (nn.Identity), for ablations
    ============== =====================================================================================

    ``batch_norm`` adds a warp BatchNorm to the conv kinds; ``hidden`` adds a hidden convolution of that
    width to ``linear`` / ``nonlinear`` / ``residual`` (the ablation's 2-layer warp: 128 then 64 filters).
    """
    if kind not in WARP_KINDS:
        raise ValueError(f"unknown warp kind {kind!r}; choose one of {', '.join(WARP_KINDS)}")
    if batch_norm and kind not in CONV_WARP_KINDS:
        raise ValueError(f"batch_norm is only available for the conv warps ({', '.join(CONV_WARP_KINDS)})")
    if kind == "linear":
        return WarpConv2d(channels, out_channels, 3, hidden_channels=hidden, activation=activation,
                          batch_norm=batch_norm, init=init)
    if kind == "conv1x1":
        return WarpConv2d(channels, out_channels, 1, activation=activation, batch_norm=batch_norm, init=init)
    if kind == "nonlinear":
        return WarpConv2d(channels, out_channels, 3, hidden_channels=hidden, activation=activation or "relu",
                          batch_norm=batch_norm, init=init)
    if kind == "residual":
        return WarpConv2d(channels, out_channels, 3, hidden_channels=hidden, activation=activation or "relu",
                          residual=True, batch_norm=batch_norm, init=init)
    if kind == "scale":
        return ChannelScale(channels)
    if kind == "linear_mlp":
        return WarpLinear(channels, out_channels, init=init)
    if kind == "residual_mlp":
        return ResidualMLPWarp(channels, hidden or 100, activation=activation or "tanh", init=init)
    return nn.Identity()
