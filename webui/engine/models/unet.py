"""The SD 1.x / 2.x / SDXL UNet, with module names that mirror the original keys (`model.diffusion_model.*`).

A checkpoint's UNet tensors load into `UNetModel` with `load_state_dict(strict=True)` and no renaming.
SDXL adds `label_emb`, which embeds the conditioning vector y (pooled text + size embeddings) and adds
it to the time embedding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..memory.attention import DEFAULT_ATTENTION, AttentionConfig, run_attention
from .specs import UNetConfig


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 for fp16 inputs, as the reference ResBlocks do (fp16 overflows).

    bf16 has fp32's range and torch accumulates its norms in fp32, so bf16 runs natively: the
    round trip through fp32 costs about a third of a bf16 step on CPU.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float16:
            return super().forward(x)
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).type(x.dtype)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of (possibly fractional) timesteps: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int) -> None:
        super().__init__()
        # Index gaps (SiLU, Dropout) keep the original key numbering: in_layers.2, out_layers.3, emb_layers.1.
        self.in_layers = nn.Sequential(GroupNorm32(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(32, out_channels), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        h = self.out_layers(h)
        return self.skip_connection(x) + h


class CrossAttention(nn.Module):
    # The attention backend; `memory.attention.set_attention` sets it per instance (default: SDPA).
    attention_config: AttentionConfig = DEFAULT_ATTENTION

    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        b, n, inner = q.shape
        # (B, N, heads*d) -> (B, heads, N, d)
        q, k, v = (t.view(b, -1, self.heads, inner // self.heads).transpose(1, 2) for t in (q, k, v))
        out = run_attention(self.attention_config, q, k, v)
        # (B, heads, N, d) -> (B, N, heads*d)
        out = out.transpose(1, 2).reshape(b, n, inner)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads, dim_head)  # self-attention
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)  # attends to the text
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int, linear: bool) -> None:
        super().__init__()
        inner = heads * dim_head
        self.linear = linear
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels) if linear else nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.linear:
            x = self.proj_in(x)
        # (B, C, H, W) -> (B, HW, C)
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, -1)
        if self.linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.linear:
            x = self.proj_out(x)
        # (B, HW, C) -> (B, C, H, W), made contiguous: a channels-last view here would slow every later conv
        x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        if not self.linear:
            x = self.proj_out(x)
        return x + x_in


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        # Upsampling to the skip connection's size (not always 2x) lets latents that are not a multiple
        # of 8 work, as in diffusers; for multiples of 8 it is exactly the reference's 2x nearest.
        x = F.interpolate(x, size=size, mode="nearest") if size else F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class TimestepEmbedSequential(nn.Sequential):
    """Runs its layers in order, giving each the inputs it takes (time embedding, context, target size)."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, up_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, up_size)
            else:
                x = layer(x)
        return x


def _transformer(cfg: UNetConfig, ch: int, depth: int) -> SpatialTransformer:
    heads, dim_head = cfg.heads_for(ch)
    return SpatialTransformer(ch, heads, dim_head, depth, cfg.context_dim, cfg.use_linear_in_transformer)


def build_encoder(cfg: UNetConfig) -> tuple[nn.ModuleList, TimestepEmbedSequential, list[int]]:
    """The UNet's downward half: (input_blocks, middle_block, the channels of each input block's output).

    A ControlNet is a trainable copy of exactly this part, so both networks build it here.
    """
    mc = cfg.model_channels
    input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
    skip_channels = [mc]
    ch = mc
    levels = len(cfg.channel_mult)
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            layers: list[nn.Module] = [ResBlock(ch, cfg.time_embed_dim, mult * mc)]
            ch = mult * mc
            if cfg.attention_levels[level]:
                layers.append(_transformer(cfg, ch, cfg.transformer_depth[level]))
            input_blocks.append(TimestepEmbedSequential(*layers))
            skip_channels.append(ch)
        if level != levels - 1:
            input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
            skip_channels.append(ch)
    middle_block = TimestepEmbedSequential(
        ResBlock(ch, cfg.time_embed_dim, ch), _transformer(cfg, ch, cfg.transformer_depth_middle),
        ResBlock(ch, cfg.time_embed_dim, ch),
    )
    return input_blocks, middle_block, skip_channels


class TimeConditioned(nn.Module):
    """The time embedding (and SDXL's `label_emb` of the conditioning vector y) that the UNet and the
    ControlNet share, under the original key names."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.config = cfg
        mc, emb_dim = cfg.model_channels, cfg.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.adm_in_channels:
            # sgm's "sequential" class embedding: label_emb.0.{0,2} (the outer Sequential keeps the key's `.0.`).
            self.label_emb = nn.Sequential(
                nn.Sequential(nn.Linear(cfg.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            )

    def embed(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """(B, time_embed_dim): the timesteps' embedding, plus y's where the network takes one (SDXL)."""
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(x.dtype))
        adm = self.config.adm_in_channels
        if (y is None) != (not adm):
            raise ValueError(f"this network takes {'a conditioning vector y of width ' + str(adm) if adm else 'no y'}, "
                             f"got {'none' if y is None else tuple(y.shape)}")
        if y is not None:
            if y.shape != (x.shape[0], adm):
                raise ValueError(f"y must be (batch {x.shape[0]}, {adm}), got {tuple(y.shape)}")
            emb = emb + self.label_emb(y.to(emb.dtype))
        return emb


class UNetModel(TimeConditioned):
    """eps/v-predicting UNet of SD 1.x / 2.x / SDXL: forward(x, timesteps, context, y=None) -> (B, out_channels, h, w)."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__(cfg)
        mc, emb_dim = cfg.model_channels, cfg.time_embed_dim
        self.input_blocks, self.middle_block, skip_channels = build_encoder(cfg)
        ch = skip_channels[-1]
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mc * mult)]
                ch = mc * mult
                if cfg.attention_levels[level]:
                    layers.append(_transformer(cfg, ch, cfg.transformer_depth[level]))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(), nn.Conv2d(mc, cfg.out_channels, 3, padding=1))

    @property
    def dtype(self) -> torch.dtype:
        return self.out[2].weight.dtype

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, y: torch.Tensor | None = None,
        control: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x: (B, in_channels, h, w) latents; timesteps: (B,) in [0, 1000); context: (B, tokens, context_dim);
        y: (B, adm_in_channels), required exactly when the model has `label_emb` (SDXL).

        control: residuals to add (a ControlNet's output): one per input block, added to that block's
        output where the output blocks take it as their skip connection, then one added to the middle
        block's output; as the original ControlNet's `ControlledUnetModel` does.
        """
        emb = self.embed(x, timesteps, y)
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        if control is not None:
            if len(control) != len(skips) + 1:
                raise ValueError(f"control must hold {len(skips) + 1} residuals (one per input block, then the "
                                 f"middle block's), got {len(control)}")
            *down, middle = control
            h = h + middle
            skips = [skip + residual for skip, residual in zip(skips, down)]
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb, context, skips[-1].shape[-2:] if skips else None)
        return self.out(h)
