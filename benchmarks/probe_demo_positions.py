"""Can the demo UNet learn where the prompt puts the shape? A fast probe of one mechanism at a time.

    .venv/bin/python benchmarks/probe_demo_positions.py --param v --context text --t 999 --steps 250

The demo UNet (`webui/demo_model/architecture.py`, fresh weights) learns to predict the image x0 at the
noisiest step. `--target` is what x0 is: `mask`, a 16x16 target that is only the shape's mask (no VAE, no
colours); `scenes`, the real training's VAE latents of the scenes (every colour pair); `white-on-black`, the
same scenes all drawn white on black (`scenes` and `white-on-black` need the trained VAE, `--vae`).
Conditioning (`--context`): `class`, a learnt vector per position word repeated over all 77 tokens, or
`text`, a fresh demo text encoder on the scenes' captions (as the real training). `--param` is what the
UNet outputs (x0, eps or v); `--t` is where training samples the timestep (999 only; `uniform` over 0..999
with the demo training's min-SNR weights; `high`: 999 - 1000 u^2, half of them above 750). `--pure-noise`
trains and evaluates t=999 on pure noise, as sampling starts, instead of the schedule's x_t, which still
holds a faint image.

Every 50 steps it prints the x0 error at t=999 on the batch with the right position in the conditioning and
with a wrong one (the position moved by four anchors): the gap is how much the UNet uses the position.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from webui.demo_model import architecture as arch
from webui.demo_model.scenes import POSITIONS, VOCABULARY, caption, scenes, shape_mask
from webui.demo_model.tokenizer import write_tokenizer
from webui.demo_model.train import TrainConfig, encode_pool, token_ids
from webui.engine.models.text_encoders import load_clip_tokenizer
from webui.engine.sampling.denoisers import DiscreteSchedule

ANCHORS = list(POSITIONS)


def targets(kind: str, pool: list, vae_path: Path) -> torch.Tensor:
    if kind == "mask":
        masks = torch.tensor(np.stack([shape_mask(s, 16, 4) for s in pool]), dtype=torch.float32)
        return (masks[:, None] * 2 - 0.5).repeat(1, 4, 1, 1)
    vae = arch.new_vae()
    vae.load_state_dict(load_file(str(vae_path)))
    latents = encode_pool(vae.eval().requires_grad_(False), pool)
    return latents / latents.std()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("mask", "scenes", "white-on-black"), default="mask")
    parser.add_argument("--vae", type=Path, default=Path("build/demo-model/vae.safetensors"))
    parser.add_argument("--param", choices=("x0", "eps", "v"), default="v")
    parser.add_argument("--context", choices=("class", "text"), default="text")
    parser.add_argument("--t", choices=("999", "uniform", "high"), default="999")
    parser.add_argument("--pure-noise", action="store_true")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/webui-probe"))
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pool = scenes(3, 4096)
    if args.target == "white-on-black":
        pool = [replace(s, colour="white", background="black") for s in pool]
    x0_all = targets(args.target, pool, args.vae)

    unet = arch.new_unet()
    write_tokenizer(args.workdir / "tokenizer", VOCABULARY)
    tokenizer = load_clip_tokenizer(args.workdir / "tokenizer")
    encoder = arch.new_text_encoder(len(tokenizer)) if args.context == "text" else torch.nn.Embedding(9, arch.TEXT_WIDTH)
    opt = torch.optim.AdamW([*unet.parameters(), *encoder.parameters()], lr=6e-4)
    alphas = DiscreteSchedule.scaled_linear().alphas_cumprod.float()
    cfg = TrainConfig()  # the demo training's min-SNR weights

    def context(scenes_: list, phrasing: np.random.Generator | None) -> torch.Tensor:
        if args.context == "class":
            return encoder(torch.tensor([ANCHORS.index(s.position) for s in scenes_]))[:, None].repeat(1, 77, 1)
        return encoder(input_ids=token_ids(tokenizer, [caption(s, phrasing) for s in scenes_])).last_hidden_state

    def x0_estimate(out: torch.Tensor, xt: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        if args.param == "x0":
            return out
        if args.param == "eps":
            return (xt - (1 - a).sqrt() * out) / a.sqrt()
        return a.sqrt() * xt - (1 - a).sqrt() * out

    for step in range(args.steps + 1):
        idx = rng.integers(len(pool), size=64)
        batch = [pool[i] for i in idx]
        x0, noise = x0_all[torch.from_numpy(idx)], torch.randn(64, 4, 16, 16)
        if args.t == "999":
            t = torch.full((64,), 999)
        elif args.t == "uniform":
            t = torch.from_numpy(rng.integers(0, 1000, size=64))
        else:
            t = torch.from_numpy(999 - (1000 * rng.random(64) ** 2).astype(np.int64))
        a = alphas[t].view(-1, 1, 1, 1)
        snr = a / (1 - a)
        signal = (t < 999).float().view(-1, 1, 1, 1) if args.pure_noise else 1.0
        xt = a.sqrt() * x0 * signal + (1 - a).sqrt() * noise
        out = unet(xt, t.float(), context(batch, rng))
        if args.param == "x0":
            loss = (out - x0).pow(2).mean()
        elif args.param == "eps":
            loss = (torch.clamp(snr, cfg.snr_floor, cfg.min_snr) / snr * (out - noise).pow(2)).mean()
        else:  # the v whose image estimate sqrt(a) x_t - sqrt(1 - a) v is x0 (plain v when x_t holds the signal)
            v = (a.sqrt() * xt - x0) / (1 - a).sqrt()
            loss = (torch.clamp(snr, cfg.snr_floor, cfg.min_snr) / (snr + 1) * (out - v).pow(2)).mean()
        if step % 50 == 0:
            with torch.no_grad():
                a9 = alphas[999]
                xt9 = a9.sqrt() * x0 * (0.0 if args.pure_noise else 1.0) + (1 - a9).sqrt() * noise
                wrong = [replace(s, position=ANCHORS[(ANCHORS.index(s.position) + 4) % 9]) for s in batch]
                errors = [float((x0_estimate(unet(xt9, torch.full((64,), 999.0), context(b, None)), xt9, a9) - x0).pow(2).mean())
                          for b in (batch, wrong)]
            print(f"step {step}: x0 error at t=999 with the right position {errors[0]:.3f}, a wrong one {errors[1]:.3f}",
                  flush=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()


if __name__ == "__main__":
    main()
