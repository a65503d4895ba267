"""Tiled VAE decode and encode: overlapping tiles, blended with linear ramps so no seams show.

Each tile is run on its own (peak memory is that of one tile). In an overlap, the two tiles' results
are cross-faded with linear ramps; the weights are normalised so that they sum to exactly 1
everywhere, and a pixel on the image border comes from the tiles touching that border only. An input
that fits in one tile is run untiled, so its result equals `vae.decode` / `vae.encode` exactly.

The result is close to, not equal to, the untiled one: the convolutions see a tile's edge instead
of its neighbours (the ramps fade those edges out), and the VAE's GroupNorm and mid-block attention
see the tile instead of the whole image. Tests state the measured bound.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Callable, TypeVar

import torch
from torch import nn

from .estimate import vae_decode_bytes, vae_encode_bytes
from .oom import OutOfMemory, detach, free_memory, out_of_memory_at, size_detail
from .policy import free_device_bytes

if TYPE_CHECKING:
    from .policy import MemoryPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")


def vae_downscale(vae: nn.Module) -> int:
    """Pixels per latent along an axis (8 for the SD VAEs)."""
    return 2 ** (len(vae.config.ch_mult) - 1)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` units covering [0, length), neighbours overlapping by at
    least `overlap` (the last tile is aligned to the end, so its overlap can be larger)."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def balanced_tile(length: int, tile: int, overlap: int) -> int:
    """The smallest tile side that still covers `length` with as many tiles as `tile` would need:
    equal tiles spread evenly do the same job as full-size tiles with the last one pushed back over its
    neighbour, with less work (at 1024 px, 54-latent tiles instead of 64: 30% less)."""
    if length <= tile:
        return length
    count = math.ceil((length - overlap) / (tile - overlap))
    return math.ceil((length + (count - 1) * overlap) / count)


def _rise(length: int) -> torch.Tensor:
    """Weights over an overlap of `length` output pixels: 0 on the outer quarter (the tile's edge,
    where its zero padding shows), a linear rise over the middle half, 1 on the inner quarter. The
    neighbour's mirror image (its fall) sums with it to exactly 1 at every pixel."""
    margin = length // 4
    i = torch.arange(length, dtype=torch.float64)
    return ((i + 0.5 - margin) / (length - 2 * margin)).clamp(0.0, 1.0)


def _ramp(size: int, ramp_before: int, ramp_after: int) -> torch.Tensor:
    """1-D weights of one tile: a rise over its overlap with the previous tile, 1, a fall over its
    overlap with the next. Floored at a tiny positive value so that the normalised blend is
    defined wherever the tile is the only one (the floor never matters where a neighbour has 1)."""
    w = torch.ones(size, dtype=torch.float64)
    if ramp_before > 0:
        w[:ramp_before] = _rise(ramp_before)
    if ramp_after > 0:
        w[size - ramp_after:] = torch.minimum(w[size - ramp_after:], _rise(ramp_after).flip(0))
    return w.clamp_min(1e-12)


def _axis_weights(starts: list[int], tile: int, scale: int) -> list[torch.Tensor]:
    """Weights (in output units) for each tile along one axis; ramps span the overlap with each
    neighbour, and the image borders get no ramp."""
    weights = []
    for i, s in enumerate(starts):
        before = (starts[i - 1] + tile - s) * scale if i > 0 else 0
        after = (s + tile - starts[i + 1]) * scale if i + 1 < len(starts) else 0
        weights.append(_ramp(tile * scale, before, after))
    return weights


def _tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
           in_unit: int, out_unit: int) -> torch.Tensor:
    """Run `fn` on overlapping tiles of `x` and blend. Tiling is on a grid whose unit is `in_unit`
    input pixels and `out_unit` output pixels; `tile` and `overlap` are in grid units."""
    if tile < 1 or overlap < 0 or overlap >= tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    h_in, w_in = x.shape[-2:]
    if h_in % in_unit or w_in % in_unit:
        raise ValueError(f"input size {h_in}x{w_in} is not a multiple of {in_unit}")
    gh, gw = h_in // in_unit, w_in // in_unit
    if gh <= tile and gw <= tile:
        return fn(x)
    th, tw = balanced_tile(gh, tile, overlap), balanced_tile(gw, tile, overlap)
    ys, xs = tile_starts(gh, th, min(overlap, th - 1)), tile_starts(gw, tw, min(overlap, tw - 1))
    wy, wx = _axis_weights(ys, th, out_unit), _axis_weights(xs, tw, out_unit)
    out = weight_sum = None
    for y, w_row in zip(ys, wy):
        for x0, w_col in zip(xs, wx):
            piece = fn(x[..., y * in_unit:(y + th) * in_unit, x0 * in_unit:(x0 + tw) * in_unit])
            if out is None:
                out = torch.zeros(*piece.shape[:-2], gh * out_unit, gw * out_unit, dtype=torch.float32,
                                  device=piece.device)
                weight_sum = torch.zeros(gh * out_unit, gw * out_unit, dtype=torch.float32, device=piece.device)
            w = (w_row[:, None] * w_col[None, :]).to(device=piece.device, dtype=torch.float32)
            oy, ox = slice(y * out_unit, (y + th) * out_unit), slice(x0 * out_unit, (x0 + tw) * out_unit)
            out[..., oy, ox] += piece.float() * w
            weight_sum[oy, ox] += w
            del piece
    return (out / weight_sum).to(x.dtype if x.is_floating_point() else torch.float32)


def tiled_decode(vae: nn.Module, z: torch.Tensor, tile: int = 64, overlap: int = 16) -> torch.Tensor:
    """`vae.decode(z)` in overlapping latent tiles of `tile` latents, overlapping by `overlap`."""
    return _tiled(vae.decode, z, tile, overlap, in_unit=1, out_unit=vae_downscale(vae))


def tiled_encode(vae: nn.Module, x: torch.Tensor, tile: int = 512, overlap: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """`vae.encode(x)` -> (mean, logvar) in overlapping pixel tiles of `tile` pixels, overlapping by
    `overlap` (both rounded down to multiples of the VAE's downscale factor, 8)."""
    f = vae_downscale(vae)
    if tile < f:
        raise ValueError(f"tile must be at least {f} pixels, got {tile}")

    def run(pixels: torch.Tensor) -> torch.Tensor:
        return torch.cat(vae.encode(pixels), dim=1)

    both = _tiled(run, x, tile // f, overlap // f, in_unit=f, out_unit=1)
    mean, logvar = both.chunk(2, dim=1)
    return mean, logvar


# --- Within the memory policy: whole or tiled, and tiled after running out of memory -----------------


def decode_tile(policy: MemoryPolicy, vae: nn.Module, z: torch.Tensor) -> int | None:
    """The tile side (latents) to decode `z` with under `policy`, or None for one piece: "on" always
    tiles, "off" never, "auto" tiles when the estimated peak exceeds the device's free memory."""
    if policy.vae_tiling != "auto":
        return policy.vae_tile if policy.vae_tiling == "on" else None
    b, _, h, w = z.shape
    need = vae_decode_bytes(vae.config, b, h, w, vae.dtype, policy.attention)
    return policy.vae_tile if _exceeds_free(need, z.device) else None


def encode_tile(policy: MemoryPolicy, vae: nn.Module, x: torch.Tensor) -> int | None:
    """As `decode_tile`, for encoding the image `x`; the tile side is in latents too."""
    if policy.vae_tiling != "auto":
        return policy.vae_tile if policy.vae_tiling == "on" else None
    b, _, h, w = x.shape
    need = vae_encode_bytes(vae.config, b, h, w, vae.dtype, policy.attention)
    return policy.vae_tile if _exceeds_free(need, x.device) else None


def _exceeds_free(need: float, device: torch.device) -> bool:
    free = free_device_bytes(device)
    return free is not None and need > free


def decode_within(policy: MemoryPolicy, vae: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """`vae.decode(z)`, tiled when the policy says so; with "auto", out of memory retries tiled with
    ever smaller tiles (down to 8 latents) before it gives up with `OutOfMemory` at "VAE decode"."""
    f = vae_downscale(vae)
    detail = size_detail(z.shape[-1] * f, z.shape[-2] * f, z.shape[0])

    def run(tile: int | None) -> torch.Tensor:
        return vae.decode(z) if tile is None else tiled_decode(vae, z, tile, min(policy.vae_tile_overlap, tile // 4))

    return _with_smaller_tiles(policy, run, decode_tile(policy, vae, z), max(z.shape[-2:]), "VAE decode", detail)


def encode_within(policy: MemoryPolicy, vae: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`vae.encode(x)`, tiled as `decode_within` decides (tile sizes in latents), at "VAE encode"."""
    f = vae_downscale(vae)
    detail = size_detail(x.shape[-1], x.shape[-2], x.shape[0])

    def run(tile: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        if tile is None:
            return vae.encode(x)
        return tiled_encode(vae, x, tile * f, min(policy.vae_tile_overlap, tile // 4) * f)

    return _with_smaller_tiles(policy, run, encode_tile(policy, vae, x), max(x.shape[-2:]) // f, "VAE encode", detail)


def _tile_sizes(policy: MemoryPolicy, first: int | None, extent: int) -> list[int | None]:
    """`first`, then (unless tiling is off) ever smaller tiles to retry with, down to 8 latents;
    tiles that cover the whole `extent` (latents) are left out: they would decode it in one piece again."""
    sizes = [first]
    if policy.vae_tiling != "off":
        tile = policy.vae_tile if first is None else first // 2
        while tile >= 8:
            if tile < extent:
                sizes.append(tile)
            tile //= 2
    return sizes


def _with_smaller_tiles(policy: MemoryPolicy, run: Callable[[int | None], T], first: int | None, extent: int,
                        stage: str, detail: str) -> T:
    sizes = _tile_sizes(policy, first, extent)
    for size, retry in zip(sizes, [*sizes[1:], None]):
        try:
            with out_of_memory_at(stage, detail):
                return run(size)
        except OutOfMemory as exc:
            if retry is None:
                raise
            detach(exc)
        free_memory()
        log.warning("out of memory at %s (%s) with %s; retrying with %d-latent tiles", stage, detail,
                    "the whole image" if size is None else f"{size}-latent tiles", retry)
    raise AssertionError("unreachable: the last size raises")
