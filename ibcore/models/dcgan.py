r"""DCGAN-style encoder for 32×32 images and the Deep InfoMax critics (``deep_infomax.md``).

The encoder :math:`E_\psi = f_\psi \circ C_\psi` of the source's Figure 1:

* ``C_ψ``: three 4×4 stride-2 convolutions (widths ``w, 2w, 4w``; batch norm and ReLU after the
  second and third), 32×32 → 16×16 → 8×8 → 4×4. The **local feature map** of local DIM is the
  ``M × M = 8 × 8`` map after the second convolution (each of its 64 vectors sees a 10×10 pixel
  patch); the **conv** features of the probes are the 4×4 map of the last convolution, as in
  the source ("the last convolutional layer (conv)").
* ``f_ψ``: a 1024-unit fully connected layer with batch norm and ReLU (**fc**), then a linear
  map to the 64-dimensional representation **Y**.

The paper profile uses ``w = 64`` (64, 128, 256 channels: the source's DCGAN discriminator
widths); the CPU profile uses a narrower ``w`` and says so.

**Critic design: encode-and-dot** (not concat-and-score). Every critic is a product of two
embeddings, :math:`T(c, y) = \langle \phi(c), \chi(y) \rangle`, so the scores of *all* pairs in
a batch cost one matrix product instead of ``B²`` (global) or ``B²M²`` (local) network
evaluations:

* :class:`GlobalCritic`: φ flattens the whole 8×8 feature map into a two-layer MLP, χ is a
  two-layer MLP of Y; scores ``[B, B]`` with ``scores[i, j] = T(C(x_i), Y_j)``.
* :class:`LocalCritic`: φ is a 1×1-convolution MLP (with a linear shortcut) applied to every
  location, χ a two-layer MLP of Y (with a linear shortcut); scores ``[B, B, M²]`` with
  ``scores[i, j, l] = T(C^{(l)}(x_i), Y_j)``.
* :class:`PriorDiscriminator`: an MLP logit ``s(y)``, ``D(y) = σ(s(y))``, that tells samples of
  the prior from encoder outputs (source's Figure 7).

:class:`ConvDecoder` mirrors the encoder (Y → 1024 → 4×4 map → three transposed convolutions)
for the autoencoder baseline; :class:`Classifier` adds a linear head on Y for the supervised
baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ibcore.errors import ShapeError
from ibcore.models.init import init_from_generator
from ibcore.validation import check_int

__all__ = [
    "IMAGE_SIZE",
    "LOCAL_SIZE",
    "Classifier",
    "ConvDecoder",
    "DCGANEncoder",
    "EncoderOutput",
    "GlobalCritic",
    "LocalCritic",
    "PriorDiscriminator",
]

IMAGE_SIZE = 32
"""Input height and width the encoder accepts."""

LOCAL_SIZE = 8
"""``M``: side of the local feature map (after the second convolution)."""

_CONV_SIZE = 4  # side of the last convolutional map


@dataclass(frozen=True)
class EncoderOutput:
    """The encoder's three feature levels plus the local map.

    ``local``: ``[B, 2w, M, M]``; ``conv``: ``[B, 4w, 4, 4]``; ``fc``: ``[B, fc_dim]``;
    ``y``: ``[B, y_dim]``.
    """

    local: Tensor
    conv: Tensor
    fc: Tensor
    y: Tensor


class DCGANEncoder(nn.Module):
    """``E_ψ``: ``[B, channels, 32, 32]`` images → :class:`EncoderOutput` (see module docstring).

    ``width`` is ``w`` (conv channels ``w, 2w, 4w``); ``fc_dim`` the hidden fc width (1024 in
    the source); ``y_dim`` the representation size (64 in the source).
    """

    def __init__(
        self,
        channels: int = 3,
        *,
        width: int = 64,
        fc_dim: int = 1024,
        y_dim: int = 64,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_int("channels", channels)
        self.width = check_int("width", width)
        self.fc_dim = check_int("fc_dim", fc_dim)
        self.y_dim = check_int("y_dim", y_dim)
        w = self.width
        self.conv1 = nn.Sequential(nn.Conv2d(self.channels, w, 4, 2, 1), nn.ReLU())
        self.conv2 = nn.Sequential(
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.BatchNorm2d(2 * w), nn.ReLU()
        )
        self.conv3 = nn.Sequential(
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.BatchNorm2d(4 * w), nn.ReLU()
        )
        self.fc = nn.Sequential(
            nn.Linear(4 * w * _CONV_SIZE**2, self.fc_dim),
            nn.BatchNorm1d(self.fc_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(self.fc_dim, self.y_dim)
        init_from_generator(generator, self)

    @property
    def local_channels(self) -> int:
        """Channels of the local feature map (``2w``)."""
        return 2 * self.width

    @property
    def conv_dim(self) -> int:
        """Size of the flattened conv features (``4w · 4 · 4``)."""
        return 4 * self.width * _CONV_SIZE**2

    def forward(self, x: Tensor) -> EncoderOutput:
        if x.dim() != 4 or x.shape[1:] != (self.channels, IMAGE_SIZE, IMAGE_SIZE):
            raise ShapeError(
                f"DCGANEncoder expects images of shape [B, {self.channels}, {IMAGE_SIZE}, "
                f"{IMAGE_SIZE}], got {tuple(x.shape)}; pad or resize them to 32×32 first "
                "(ibcore.data.pad_to_size)"
            )
        local = self.conv2(self.conv1(x))
        conv = self.conv3(local)
        fc = self.fc(conv.flatten(1))
        return EncoderOutput(local=local, conv=conv, fc=fc, y=self.head(fc))


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class _ResidualMLP(nn.Module):
    """``x ↦ MLP(x) + Linear(x)``: a two-layer MLP with a linear shortcut."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int) -> None:
        super().__init__()
        self.mlp = _mlp([dim_in, hidden, dim_out])
        self.shortcut = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x) + self.shortcut(x)


class GlobalCritic(nn.Module):
    r"""Global DIM critic ``T(C(x), y) = ⟨φ(vec C(x)), χ(y)⟩`` (encode-and-dot).

    :meth:`forward` returns the ``[B, B]`` score matrix ``scores[i, j] = T(C(x_i), y_j)``: the
    diagonal pairs each feature map with its own image's Y (samples of the joint), the
    off-diagonal entries pair it with the other images' Y (samples of the product of marginals).
    """

    def __init__(
        self,
        local_channels: int,
        y_dim: int,
        *,
        hidden: int = 512,
        embed: int = 128,
        local_size: int = LOCAL_SIZE,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.local_channels = check_int("local_channels", local_channels)
        self.local_size = check_int("local_size", local_size)
        self.y_dim = check_int("y_dim", y_dim)
        hidden, embed = check_int("hidden", hidden), check_int("embed", embed)
        self.phi = _mlp([self.local_channels * self.local_size**2, hidden, embed])
        self.chi = _mlp([self.y_dim, hidden, embed])
        init_from_generator(generator, self)

    def forward(self, local: Tensor, y: Tensor) -> Tensor:
        _check_critic_inputs(local, y, self.local_channels, self.y_dim, self.local_size)
        return self.phi(local.flatten(1)) @ self.chi(y).T


class LocalCritic(nn.Module):
    r"""Local DIM critic ``T(c, y) = ⟨φ(c), χ(y)⟩`` applied at every location (encode-and-dot).

    φ is a 1×1-convolution network (an MLP with a linear shortcut shared by all locations), χ
    an MLP with a linear shortcut. :meth:`forward` returns ``[B, B, M²]`` scores with
    ``scores[i, j, l] = T(C^{(l)}(x_i), y_j)``: entries with ``i = j`` are positive pairs, all
    others pair location ``l`` of image ``i`` with another image's Y.
    """

    def __init__(
        self,
        local_channels: int,
        y_dim: int,
        *,
        hidden: int = 512,
        embed: int = 128,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.local_channels = check_int("local_channels", local_channels)
        self.y_dim = check_int("y_dim", y_dim)
        hidden, embed = check_int("hidden", hidden), check_int("embed", embed)
        self.phi = _ResidualMLP(self.local_channels, hidden, embed)
        self.chi = _ResidualMLP(self.y_dim, hidden, embed)
        init_from_generator(generator, self)

    def forward(self, local: Tensor, y: Tensor) -> Tensor:
        _check_critic_inputs(local, y, self.local_channels, self.y_dim, None)
        b = local.shape[0]
        feats = self.phi(local.flatten(2).transpose(1, 2))  # [B, M², e]
        emb = self.chi(y)  # [B, e]
        # scores[i, j, l] = <feats[i, l], emb[j]>
        return torch.einsum("ile,je->ijl", feats, emb).reshape(b, b, -1)


def _check_critic_inputs(
    local: Tensor, y: Tensor, channels: int, y_dim: int, size: int | None
) -> None:
    if local.dim() != 4 or local.shape[1] != channels or (
        size is not None and local.shape[2:] != (size, size)
    ):
        side = "M, M" if size is None else f"{size}, {size}"
        raise ShapeError(
            f"the local feature map must have shape [B, {channels}, {side}], got "
            f"{tuple(local.shape)}"
        )
    if y.dim() != 2 or y.shape[1] != y_dim or y.shape[0] != local.shape[0]:
        raise ShapeError(
            f"y must have shape [{local.shape[0]}, {y_dim}] (one row per image of the feature "
            f"map), got {tuple(y.shape)}"
        )


class PriorDiscriminator(nn.Module):
    """``s(y)``: logit of "``y`` was drawn from the prior" (``D(y) = σ(s(y))``); shape ``[B]``."""

    def __init__(
        self,
        y_dim: int,
        *,
        hidden: tuple[int, ...] = (1000, 200),
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.y_dim = check_int("y_dim", y_dim)
        sizes = [self.y_dim, *(check_int("hidden", h) for h in hidden), 1]
        self.net = _mlp(sizes)
        init_from_generator(generator, self)

    def forward(self, y: Tensor) -> Tensor:
        if y.dim() != 2 or y.shape[1] != self.y_dim:
            raise ShapeError(f"y must have shape [B, {self.y_dim}], got {tuple(y.shape)}")
        return self.net(y).squeeze(1)


class ConvDecoder(nn.Module):
    """Mirror of :class:`DCGANEncoder`: ``[B, y_dim]`` → ``[B, channels, 32, 32]`` in ``(-1, 1)``."""

    def __init__(
        self,
        channels: int = 3,
        *,
        width: int = 64,
        fc_dim: int = 1024,
        y_dim: int = 64,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_int("channels", channels)
        self.width = check_int("width", width)
        self.y_dim = check_int("y_dim", y_dim)
        w = self.width
        self.fc = nn.Sequential(
            nn.Linear(self.y_dim, check_int("fc_dim", fc_dim)),
            nn.BatchNorm1d(fc_dim),
            nn.ReLU(),
            nn.Linear(fc_dim, 4 * w * _CONV_SIZE**2),
            nn.BatchNorm1d(4 * w * _CONV_SIZE**2),
            nn.ReLU(),
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.ConvTranspose2d(w, self.channels, 4, 2, 1), nn.Tanh(),
        )
        init_from_generator(generator, self)

    def forward(self, y: Tensor) -> Tensor:
        if y.dim() != 2 or y.shape[1] != self.y_dim:
            raise ShapeError(f"y must have shape [B, {self.y_dim}], got {tuple(y.shape)}")
        h = self.fc(y).reshape(y.shape[0], 4 * self.width, _CONV_SIZE, _CONV_SIZE)
        return self.deconv(h)


class Classifier(nn.Module):
    """The supervised baseline: the same encoder with a linear head on Y (logits ``[B, K]``)."""

    def __init__(
        self, encoder: DCGANEncoder, classes: int, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.y_dim, check_int("classes", classes, low=2))
        init_from_generator(generator, self.head)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x).y)
