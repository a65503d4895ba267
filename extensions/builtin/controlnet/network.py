"""The ControlNet network (Zhang et al. 2023), with module names that mirror the original keys.

A ControlNet is a trainable copy of the UNet's downward half (`input_blocks`, `middle_block`, built by
the engine's own `build_encoder`), fed the noisy latents plus an encoded control image (the hint), and
read out through 1x1 "zero" convolutions: one residual per UNet input block and one for the middle
block, which the UNet adds to its skip connections (`UNetModel.forward(control=...)`).

Original layout (after the `control_model.` prefix): `time_embed.*`, `label_emb.*` (SDXL),
`input_hint_block.{0,2,...,14}` (convolutions, SiLU between), `input_blocks.*`, `zero_convs.{i}.0`,
`middle_block.*`, `middle_block_out.0`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from webui.engine.models.specs import UNetConfig
from webui.engine.models.unet import TimeConditioned, build_encoder

FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}


@dataclass(frozen=True)
class ControlNetConfig:
    unet: UNetConfig  # the encoder it copies (in_channels: the latent channels it reads, usually 4)
    family: str  # "sd1", "sd2" or "sdxl": the base models it was trained for
    # The hint encoder's convolutions as (in, out) channels: the original's hint -> 16, 16, 32, 32, 96, 96,
    # 256 -> model_channels. A convolution that changes the width (except the first and the last)
    # halves the size, so the hint is encoded down to the latents' size (8x smaller).
    hint_convs: tuple[tuple[int, int], ...] = ((3, 16), (16, 16), (16, 32), (32, 32), (32, 96), (96, 96),
                                               (96, 256), (256, 320))

    @property
    def hint_channels(self) -> int:
        return self.hint_convs[0][0]

    @property
    def label(self) -> str:
        return FAMILY_LABELS[self.family]


def hint_block(convs: tuple[tuple[int, int], ...]) -> nn.Sequential:
    """Convolutions (3x3) with SiLU between, at indices 0, 2, 4, ... as in the original `input_hint_block`."""
    layers: list[nn.Module] = []
    last = len(convs) - 1
    for i, (c_in, c_out) in enumerate(convs):
        stride = 2 if 0 < i < last and c_in != c_out else 1
        layers.append(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1))
        if i < last:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class ControlNet(TimeConditioned):
    """forward(x, timesteps, context, hint, y=None) -> residuals for `UNetModel.forward(control=...)`."""

    def __init__(self, cfg: ControlNetConfig) -> None:
        super().__init__(cfg.unet)
        self.control_config = cfg
        self.input_hint_block = hint_block(cfg.hint_convs)
        self.input_blocks, self.middle_block, channels = build_encoder(cfg.unet)
        self.zero_convs = nn.ModuleList(nn.Sequential(nn.Conv2d(c, c, 1)) for c in channels)
        self.middle_block_out = nn.Sequential(nn.Conv2d(channels[-1], channels[-1], 1))

    @property
    def dtype(self) -> torch.dtype:
        return self.middle_block_out[0].weight.dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, hint: torch.Tensor,
                y: torch.Tensor | None = None) -> list[torch.Tensor]:
        """x: (B, in_channels, h, w) noisy latents (as the UNet gets them); hint: (B, hint_channels, 8h, 8w)
        control image in [0, 1]; context, timesteps and y as for the UNet. Returns one residual per UNet
        input block, then the middle block's."""
        emb = self.embed(x, timesteps, y)
        guided_hint = self.input_hint_block(hint)
        residuals = []
        h = x
        for i, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, context)
            if i == 0:  # the encoded control image joins after the first convolution
                h = h + guided_hint
            residuals.append(zero_conv(h))
        h = self.middle_block(h, emb, context)
        residuals.append(self.middle_block_out(h))
        return residuals
