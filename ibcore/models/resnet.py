r"""Residual networks of the *entropy-estimator IB* chapter (``entropy_estimator_ib.md``, §5).

* :class:`ResNetEncoder`: a CIFAR-style residual encoder (3×3 stem, no max-pool, stages of
  :class:`BasicBlock` s, global average pooling) followed by one linear layer to a ``K``-dim
  latent :math:`\hat z = f_\theta(x)`. :func:`resnet18_encoder` builds the ResNet18 layout of
  the source (He et al., 2016: widths 64-128-256-512, two blocks per stage); the chapter's
  ``cpu`` profile uses a much smaller one (fewer channels, one block per stage).
* :class:`ResFC`: the source's fully connected decoder "inspired by ResNets": a linear map
  from the latent to ``width`` units (1024 in the source), ``blocks`` residual blocks
  :math:`h \mapsto h + W_2\,\mathrm{ReLU}(\mathrm{BN}(W_1\,\mathrm{ReLU}(\mathrm{BN}(h))))`
  (5 in the source), a final BatchNorm and a linear layer to the class logits.

Weights are drawn from an explicit ``torch.Generator`` when one is given (PyTorch's default
initialisation scheme, see :func:`ibcore.models.init.init_from_generator`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ibcore.errors import InvalidParameterError, ShapeError
from ibcore.models.init import init_from_generator
from ibcore.validation import check_int

__all__ = ["BasicBlock", "ResFC", "ResNetEncoder", "resnet18_encoder"]


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with BatchNorm and a skip (1×1 conv when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.skip = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.skip(x))


class ResNetEncoder(nn.Module):
    r"""Deterministic encoder ``[B, channels, H, W]`` images → ``[B, latent_dim]`` latents.

    Stage ``s`` has ``blocks[s]`` :class:`BasicBlock` s of ``widths[s]`` channels; every stage
    after the first halves the resolution. Any image size ≥ 8 works (global average pooling).
    """

    def __init__(
        self,
        channels: int = 3,
        *,
        latent_dim: int = 256,
        widths: Sequence[int] = (64, 128, 256, 512),
        blocks: Sequence[int] = (2, 2, 2, 2),
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_int("channels", channels)
        self.latent_dim = check_int("latent_dim", latent_dim)
        widths, blocks = tuple(widths), tuple(blocks)
        if not widths or len(widths) != len(blocks):
            raise InvalidParameterError(
                f"widths and blocks must be non-empty and of equal length (one entry per stage), "
                f"got {widths} and {blocks}"
            )
        for w in widths:
            check_int("width", w)
        for b in blocks:
            check_int("blocks per stage", b)
        self.stem = nn.Sequential(
            nn.Conv2d(self.channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        prev = widths[0]
        for s, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            for i in range(n):
                layers.append(BasicBlock(prev, w, stride=2 if (s > 0 and i == 0) else 1))
                prev = w
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(prev, self.latent_dim)
        init_from_generator(generator, self)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ShapeError(
                f"images must have shape [B, {self.channels}, H, W], got {tuple(x.shape)}"
            )
        if min(x.shape[-2:]) < 8:
            raise ShapeError(f"images must be at least 8×8 pixels, got {tuple(x.shape[-2:])}")
        h = self.stages(self.stem(x))
        return self.head(h.mean(dim=(2, 3)))


def resnet18_encoder(
    channels: int = 3, latent_dim: int = 256, generator: torch.Generator | None = None
) -> ResNetEncoder:
    """The source's encoder: ResNet18 (CIFAR layout) with a ``latent_dim`` = K output (K = 256)."""
    return ResNetEncoder(channels, latent_dim=latent_dim, widths=(64, 128, 256, 512),
                         blocks=(2, 2, 2, 2), generator=generator)


class _ResFCBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, width),
            nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, width),
        )

    def forward(self, h: Tensor) -> Tensor:
        return h + self.body(h)


class ResFC(nn.Module):
    """The source's ResFC decoder: latent ``[B, K]`` → class logits ``[B, classes]`` (§5)."""

    def __init__(
        self,
        latent_dim: int,
        classes: int,
        *,
        width: int = 1024,
        blocks: int = 5,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.latent_dim = check_int("latent_dim", latent_dim)
        self.classes = check_int("classes", classes, low=2)
        width = check_int("width", width)
        blocks = check_int("blocks", blocks, low=0)
        self.inp = nn.Linear(self.latent_dim, width)
        self.blocks = nn.Sequential(*[_ResFCBlock(width) for _ in range(blocks)])
        self.out = nn.Sequential(nn.BatchNorm1d(width), nn.Linear(width, self.classes))
        init_from_generator(generator, self)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ShapeError(f"z must have shape [B, {self.latent_dim}], got {tuple(z.shape)}")
        return self.out(self.blocks(self.inp(z)))
