"""Actor-critics with one convolutional encoder shared by a policy head and a value head.

Two encoders (``ActorCritic(network=...)``, ``atari.network`` in a run config):

- ``"nature"`` (default): the Nature-DQN network (Mnih et al., 2015): conv 32 8×8/4, conv 64 4×4/2, conv 64
  3×3/1, fully connected 512; on 4 stacked grey 84×84 frames (SB3's ``CnnPolicy``).
- ``"mnih2013"``: the network of Mnih et al. (2013), the one the Leap paper's Atari experiments use: conv 16
  8×8/4, conv 32 4×4/2, fully connected 256; there on one 84×84 RGB frame (3 channels).

Parameter names are part of the contract with the meta-learners: everything under ``encoder.`` is the
game-independent trunk (what Leap meta-learns on Atari, ``include=["encoder."]``), while ``policy.`` and
``value.`` are the per-game heads (``head = ("policy.", "value.")`` in the task adapter).

Initialisation follows SB3's ``ActorCriticPolicy(ortho_init=True)``: orthogonal weights with gain √2 in the
encoder, 0.01 for the policy logits and 1 for the value, all biases zero.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _ortho_(module: nn.Module, gain: float, generator: torch.Generator | None) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.orthogonal_(m.weight, gain=gain, generator=generator)
            nn.init.zeros_(m.bias)


def frames_in(obs: Tensor) -> Tensor:
    """uint8 frames (N, C, H, W) → the encoder's float input in [0, 1], channels-last.

    Channels-last input makes oneDNN's first convolution, above all its weight gradient, much faster on CPU
    (docs/RESULTS.md). Transposing the uint8 frames before the float conversion moves a quarter of the bytes."""
    return obs.contiguous(memory_format=torch.channels_last).float().div_(255.0)


class _FrameEncoder(nn.Module):
    """uint8 frames → features through ``self.conv`` (ending in a flatten) and ``self.fc``, which the
    subclass builds; the /255 scaling happens here, on the small batch."""

    def conv_features(self, obs: Tensor) -> Tensor:
        """(N, C, 84, 84) uint8 → (N, D) flattened convolutional features (D: 3136 Nature, 2592 Mnih 2013)."""
        return self.conv(frames_in(obs))

    def forward(self, obs: Tensor) -> Tensor:
        return self.fc(self.conv_features(obs))


class NatureEncoder(_FrameEncoder):
    """(N, 4, 84, 84) uint8 frames → (N, 512) features; the /255 scaling happens here, on the small batch."""

    def __init__(self, in_channels: int = 4, features: int = 512) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        self.fc = nn.Sequential(nn.Linear(64 * 7 * 7, features), nn.ReLU())


class Mnih2013Encoder(_FrameEncoder):
    """(N, C, 84, 84) uint8 frames → (N, 256) features: conv 16 8×8/4, conv 32 4×4/2, fc 256 (Mnih et al.,
    2013). The same interface as :class:`NatureEncoder` (``conv_features``, ``fc``)."""

    def __init__(self, in_channels: int = 3, features: int = 256) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 16, 8, stride=4), nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2), nn.ReLU(),
            nn.Flatten(),
        )
        self.fc = nn.Sequential(nn.Linear(32 * 9 * 9, features), nn.ReLU())


# network name → (encoder class, default feature width)
ENCODERS = {"nature": (NatureEncoder, 512), "mnih2013": (Mnih2013Encoder, 256)}


class ActorCritic(nn.Module):
    """``forward(obs) -> (logits (N, A), value (N,))``; ``network`` picks the encoder (module docstring),
    ``features`` its width (default: the network's own, 512 or 256)."""

    def __init__(self, num_actions: int, in_channels: int = 4, features: int | None = None,
                 generator: torch.Generator | None = None, network: str = "nature") -> None:
        super().__init__()
        if network not in ENCODERS:
            raise ValueError(f"unknown network {network!r}; choose one of {', '.join(ENCODERS)}")
        encoder, width = ENCODERS[network]
        features = features or width
        self.num_actions = num_actions
        self.network = network
        self.encoder = encoder(in_channels, features)
        self.policy = nn.Linear(features, num_actions)
        self.value = nn.Linear(features, 1)
        _ortho_(self.encoder, math.sqrt(2.0), generator)
        _ortho_(self.policy, 0.01, generator)
        _ortho_(self.value, 1.0, generator)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.trunk(obs))

    # The A2C loop splits the network in two (agents/a2c.py): the acting passes keep the trunk's graph, and
    # the loss runs the rest once over the whole rollout. The split sits before the 1.6M-weight linear
    # layer: its backward is one batched matrix product instead of one per acting pass.
    def trunk(self, obs: Tensor) -> Tensor:
        """uint8 frames → convolutional features (N, 3136 Nature, 2592 Mnih 2013)."""
        return self.encoder.conv_features(obs)

    def head(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Convolutional features → (logits (N, A), value (N,))."""
        h = self.encoder.fc(features)
        # Heads always run in float32, also under a bfloat16 autocast of the encoder: they are tiny, and
        # logits and values are what the loss is made of.
        with torch.autocast(h.device.type, enabled=False):
            h = h.float()
            return self.policy(h), self.value(h).squeeze(-1)

    @torch.no_grad()
    def reset_heads(self, num_actions: int, generator: torch.Generator | None = None) -> None:
        """Fresh policy/value heads (sized for ``num_actions``) on the same encoder, e.g. for a new game."""
        features = self.policy.in_features
        device = self.policy.weight.device
        self.num_actions = num_actions
        self.policy = nn.Linear(features, num_actions, device=device)
        self.value = nn.Linear(features, 1, device=device)
        _ortho_(self.policy, 0.01, generator)
        _ortho_(self.value, 1.0, generator)
