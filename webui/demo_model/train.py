"""Train the built-in demo model on the CPU: `python -m webui.demo_model.train`.

Stages, each deterministic by seed:
1. `vae`: the autoencoder, on 64x64 crops of rendered scenes (filled and hollow shapes), then on whole
   images, until flat colours come back faithfully; in the whole-image phase its last latent channel also
   learns to be the shape's coverage. Then its latent scale is folded in so SD's 0.18215 fits it.
2. `unet`: a pool of scenes is encoded once; the UNet and the text encoder learn together on it
   (v-prediction, SD's scaled-linear schedule, min-SNR weighting with a floor, coarse "offset" noise,
   10% empty captions for CFG, EMA).
   Writes `checkpoints/webui-demo.safetensors` and `checkpoints/webui-demo.tokenizer/`.
3. `lora`: from the saved checkpoint, loaded by the app's own loader, a LoRA that draws hollow outlines
   (`loras/webui-demo-hollow.safetensors`); see `lora_training.py`.
4. `controlnet`: from the saved checkpoint, a ControlNet that places the shape where a canny edge map
   puts it (`controlnet/webui-demo-canny.safetensors`); see `controlnet_training.py`.
76 to 90 minutes on a 2-core CPU (benchmarks/RESULTS.md, "Demo model").
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from webui.engine.models.specs import SD_LATENT_SCALE
from webui.engine.models.text_encoders import load_clip_tokenizer
from webui.engine.sampling.denoisers import DiscreteSchedule

from . import architecture as arch
from .scenes import VOCABULARY, caption, render, scenes, shape_mask
from .tokenizer import write_tokenizer

CHECKPOINT_NAME = "webui-demo"
LORA_NAME = "webui-demo-hollow"
CONTROLNET_NAME = "webui-demo-canny"


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    vae_steps: int = 2400
    vae_batch: int = 8
    vae_crop: int = 64
    vae_lr: float = 3e-4
    vae_full_steps: int = 700  # then whole 128x128 images, so borders and the mid attention see the real size
    vae_full_batch: int = 4
    vae_full_lr: float = 2e-4
    hollow_share: float = 0.3  # of VAE training scenes (the LoRA draws outlines)
    # The VAE's last latent channel is taught to be the shape's coverage (+s on the shape, -s on the
    # background, s the spread of the other channels), the same sign for every colour pair. Without it the
    # position has no colour-free signal in the latents (a shape differs from its background by the colour
    # difference, which averages out over the pairs) and the UNet never learns to place the shape by the
    # prompt (benchmarks/RESULTS.md, "Demo model"). Only in the whole-image phase: from the start, it
    # slowed the colours down (mean colour error 26/255 instead of 8).
    mask_channel_weight: float = 0.1
    pool: int = 16384  # scenes encoded once for the UNet stage
    unet_steps: int = 3000
    unet_batch: int = 64
    unet_lr: float = 6e-4
    empty_caption: float = 0.1
    # The UNet predicts v (SD 2's 768-v parameterisation), not the noise: at the noisiest steps, where the
    # layout (the shape's position) is decided, an eps-model's image estimate is its noise error times
    # up to 15, and a UNet this small cannot reproduce its input that precisely; it learnt colours but
    # never positions (benchmarks/RESULTS.md, "Demo model"). v is mostly the image there.
    min_snr: float = 5.0
    # ... with a floor under the weight of the image error at the noisiest steps (min-SNR gives them
    # SNR, 0.005 at t=999).
    snr_floor: float = 0.5
    # Coarse noise added to the Gaussian noise, per image and channel: (grid, amplitude) pairs. SD's
    # schedule leaves the mean and the coarse layout of a 16x16 latent visible even at t=999; without
    # this the model copies them from the start noise (wrong background colours, positions that follow
    # the seed instead of the prompt). The 1x1 term is "offset noise".
    coarse_noise: tuple[tuple[int, float], ...] = ((8, 0.4), (4, 0.3), (2, 0.2), (1, 0.1))
    ema: float = 0.999
    snapshot_every: int = 500  # UNet steps between EMA snapshots in the work folder (to watch progress)
    lora_steps: int = 600
    lora_rank: int = 8
    controlnet_steps: int = 1500
    controlnet_batch: int = 32
    controlnet_lr: float = 3e-4
    controlnet_pool: int = 4096
    controlnet_no_position: float = 0.8  # of captions lose their position: the edges must place the shape
    stages: tuple[str, ...] = ("vae", "unet", "lora", "controlnet")
    extra: dict = field(default_factory=dict)


QUICK = dict(vae_steps=60, vae_full_steps=10, pool=512, unet_steps=60, snapshot_every=30, lora_steps=30,
             controlnet_steps=20, controlnet_pool=64)  # a smoke run of every stage


def lr_at(step: int, steps: int, peak: float, warmup: int = 200) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def images_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) images -> (B, 3, H, W) floats in [-1, 1]."""
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


# --- stage 1: VAE ------------------------------------------------------------------------------


def train_vae(cfg: TrainConfig, phase: str = "crops", vae: torch.nn.Module | None = None) -> torch.nn.Module:
    """Phase "crops": a new VAE on 64x64 crops (cheap); phase "full": `vae` continued on whole images."""
    full = phase == "full"
    seed = cfg.seed + (10 if full else 0)  # each phase seeded on its own, so it can be resumed from a file
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vae = arch.new_vae() if vae is None else vae.train().requires_grad_(True)
    steps, batch_size, peak = (cfg.vae_full_steps, cfg.vae_full_batch, cfg.vae_full_lr) if full else \
        (cfg.vae_steps, cfg.vae_batch, cfg.vae_lr)
    opt = torch.optim.AdamW(vae.parameters(), lr=peak, weight_decay=0.0)
    size, crop = arch.NATIVE_SIZE, (arch.NATIVE_SIZE if full else cfg.vae_crop)
    bar = tqdm(range(steps), desc=f"VAE ({phase})", unit="step")
    for step in bar:
        styles = ["hollow" if h else "filled" for h in rng.random(batch_size) < cfg.hollow_share]
        batch = [scenes(int(rng.integers(2**31)), 1, style)[0] for style in styles]
        arrays, covers = [], []
        for scene in batch:
            coverage = shape_mask(scene, size)  # per pixel
            image, cover = render(scene, size, coverage), latent_cover(coverage)
            y, x = rng.integers(0, size - crop + 1, size=2) // 8 * 8
            arrays.append(image[y : y + crop, x : x + crop])
            covers.append(cover[y // 8 : (y + crop) // 8, x // 8 : (x + crop) // 8])
        x = images_tensor(arrays)
        cover = torch.from_numpy(np.stack(covers)).float()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, peak, warmup=min(200, steps // 5))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mean, logvar = vae.encode(x)
            z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
            out = vae.decode(z).float()
        mean, logvar = mean.float(), logvar.float()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        spread = mean[:, :-1].detach().std().clamp(min=1e-3)
        mask_error = (mean[:, -1] / spread - (2 * cover - 1)).pow(2).mean()
        mask_weight = cfg.mask_channel_weight if full else 0.0
        loss = (out - x).abs().mean() + 0.5 * (out - x).pow(2).mean() + 1e-5 * kl + mask_weight * mask_error
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", mask=f"{mask_error.item():.3f}")
    return vae.eval().requires_grad_(False)


def latent_cover(pixels: np.ndarray) -> np.ndarray:
    """The shape's coverage of each 8x8 cell, from its coverage per pixel (`shape_mask`): what the VAE's
    last channel says."""
    h, w = pixels.shape
    return pixels.reshape(h // 8, 8, w // 8, 8).mean(axis=(1, 3))


@torch.no_grad()
def vae_colour_error(vae: torch.nn.Module, seed: int, count: int = 64) -> float:
    """Mean absolute error, in 0..255 steps, of decode(encode(x)) over freshly rendered scenes."""
    x = images_tensor([render(s) for s in scenes(seed, count)])
    out = vae.decode(vae.encode(x)[0]).clamp(-1, 1)
    return float((out - x).abs().mean() * 127.5)


@torch.no_grad()
def encode_pool(vae: torch.nn.Module, pool: list, batch: int = 64) -> torch.Tensor:
    """Posterior means of the pool's scenes, unscaled, (N, 4, 16, 16)."""
    out = []
    for i in tqdm(range(0, len(pool), batch), desc="encode", unit="batch"):
        x = images_tensor([render(s) for s in pool[i : i + batch]])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out.append(vae.encode(x)[0].float())
    return torch.cat(out)


# --- stage 2: UNet and text encoder ------------------------------------------------------------


def token_ids(tokenizer, prompts: list[str], length: int = 77) -> torch.Tensor:
    """What the app feeds the text encoder for a short prompt: BOS, tokens, EOS, padded with EOS."""
    rows = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt, add_special_tokens=False)[: length - 2]
        row = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
        rows.append(row + [tokenizer.eos_token_id] * (length - len(row)))
    return torch.tensor(rows)


def training_noise(x0: torch.Tensor, coarse: tuple[tuple[int, float], ...]) -> torch.Tensor:
    """Gaussian noise like `x0` plus, for each (grid, amplitude), a grid x grid Gaussian upsampled to full size."""
    noise = torch.randn_like(x0)
    for grid, amplitude in coarse:
        low = torch.randn(x0.shape[0], x0.shape[1], grid, grid)
        noise += amplitude * torch.nn.functional.interpolate(low, size=x0.shape[-2:], mode="bilinear", align_corners=False)
    return noise


def v_target(x0: torch.Tensor, noise: torch.Tensor, alpha_cumprod: torch.Tensor) -> torch.Tensor:
    """What a v-prediction UNet predicts for x_t = sqrt(a) x0 + sqrt(1 - a) noise."""
    return alpha_cumprod.sqrt() * noise - (1 - alpha_cumprod).sqrt() * x0


class EMA:
    def __init__(self, modules: list[torch.nn.Module], decay: float) -> None:
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - d)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The EMA weights in the models for the duration of the block."""
        saved = [p.detach().clone() for p in self.params]
        self.copy_to_model()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)


def train_unet(
    cfg: TrainConfig, latents: torch.Tensor, pool: list, tokenizer, snapshot: Callable | None = None
) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(cfg.seed + 2)
    rng = np.random.default_rng(cfg.seed + 2)
    unet, text = arch.new_unet(), arch.new_text_encoder(len(tokenizer))
    params = [*unet.parameters(), *text.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    ema = EMA([unet, text], cfg.ema)
    alphas = DiscreteSchedule.scaled_linear().alphas_cumprod.float()
    snr = alphas / (1 - alphas)
    weight = torch.clamp(snr, min=cfg.snr_floor, max=cfg.min_snr) / (snr + 1)  # min-SNR-gamma, v-prediction
    bar = tqdm(range(cfg.unet_steps), desc="UNet + text encoder", unit="step")
    for step in bar:
        idx = rng.integers(len(pool), size=cfg.unet_batch)
        prompts = ["" if rng.random() < cfg.empty_caption else caption(pool[i], rng) for i in idx]
        x0 = latents[torch.from_numpy(idx)]
        t = torch.from_numpy(rng.integers(0, 1000, size=cfg.unet_batch))
        noise = training_noise(x0, cfg.coarse_noise)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg.unet_steps, cfg.unet_lr)
        context = text(input_ids=token_ids(tokenizer, prompts)).last_hidden_state
        pred = unet(xt, t.float(), context)
        loss = (weight[t] * (pred - v_target(x0, noise, a)).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(step)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if snapshot and (step + 1) % cfg.snapshot_every == 0 and step + 1 < cfg.unet_steps:
            with ema.applied():
                snapshot(unet, text, step + 1)
    ema.copy_to_model()
    return unet.eval().requires_grad_(False), text.eval().requires_grad_(False)


# --- driver ------------------------------------------------------------------------------------


def run(cfg: TrainConfig, models_dir: Path, work_dir: Path) -> dict:
    report: dict = {"config": asdict(cfg), "seconds": {}}
    started = time.perf_counter()
    checkpoints = models_dir / "checkpoints"
    checkpoint = checkpoints / f"{CHECKPOINT_NAME}.safetensors"
    tokenizer_dir = checkpoints / f"{CHECKPOINT_NAME}.tokenizer"
    work_dir.mkdir(parents=True, exist_ok=True)
    vae_file = work_dir / "vae.safetensors"

    if "vae" in cfg.stages:
        t0 = time.perf_counter()
        vae = train_vae(cfg, "crops")
        save_file(vae.state_dict(), str(work_dir / "vae-crops.safetensors"))
        vae = train_vae(cfg, "full", vae)
        save_file(vae.state_dict(), str(vae_file))
        report["vae_colour_error"] = vae_colour_error(vae, cfg.seed + 100)
        report["seconds"]["vae"] = time.perf_counter() - t0
        print(f"VAE: mean colour error {report['vae_colour_error']:.2f}/255", flush=True)

    if "unet" in cfg.stages:
        t0 = time.perf_counter()
        vae = arch.new_vae()
        vae.load_state_dict(load_file(str(vae_file)))
        vae.eval().requires_grad_(False)
        pool = scenes(cfg.seed + 1, cfg.pool)
        latents = encode_pool(vae, pool)
        k = arch.fold_latent_scale(vae, float(latents.std()))
        latents = latents * k * SD_LATENT_SCALE
        report["latent_scale_fold"] = k
        write_tokenizer(tokenizer_dir, VOCABULARY)
        tokenizer = load_clip_tokenizer(tokenizer_dir)
        report["seconds"]["encode"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        checkpoints.mkdir(parents=True, exist_ok=True)
        metadata = {"modelspec.title": "webui demo model", "modelspec.prediction_type": "v",
                    "modelspec.resolution": f"{arch.NATIVE_SIZE}x{arch.NATIVE_SIZE}",
                    "webui.training": json.dumps(asdict(cfg))}

        def snapshot(unet, text, step: int) -> None:
            path = work_dir / f"{CHECKPOINT_NAME}-step{step}.safetensors"
            save_file(arch.checkpoint_state_dict(unet, vae, text), str(path), metadata=metadata)
            link = work_dir / f"{CHECKPOINT_NAME}-step{step}.tokenizer"
            if link.is_symlink():  # perhaps left by an earlier run, to another folder
                link.unlink()
            link.symlink_to(tokenizer_dir.resolve(), target_is_directory=True)

        unet, text = train_unet(cfg, latents, pool, tokenizer, snapshot)
        save_file(arch.checkpoint_state_dict(unet, vae, text), str(checkpoint), metadata=metadata)
        report["seconds"]["unet"] = time.perf_counter() - t0

    if "lora" in cfg.stages:
        from .lora_training import train_lora

        t0 = time.perf_counter()
        train_lora(cfg, checkpoint, models_dir / "loras" / f"{LORA_NAME}.safetensors")
        report["seconds"]["lora"] = time.perf_counter() - t0

    if "controlnet" in cfg.stages:
        from .controlnet_training import train_controlnet

        t0 = time.perf_counter()
        train_controlnet(cfg, checkpoint, models_dir / "controlnet" / f"{CONTROLNET_NAME}.safetensors")
        report["seconds"]["controlnet"] = time.perf_counter() - t0

    report["seconds"]["total"] = time.perf_counter() - started
    (work_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m webui.demo_model.train", description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="where checkpoints/ and loras/ are")
    parser.add_argument("--work-dir", type=Path, default=Path("build/demo-model"), help="intermediate files and the report")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", default="vae,unet,lora,controlnet",
                        help="comma-separated subset of vae,unet,lora,controlnet")
    parser.add_argument("--quick", action="store_true", help="a few steps of every stage (a smoke test, not a model)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = set(stages) - {"vae", "unet", "lora", "controlnet"}
    if unknown:
        parser.error(f"--stages: unknown stage(s) {sorted(unknown)}; choose from vae, unet, lora, controlnet")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(seed=args.seed, stages=stages, **(QUICK if args.quick else {}))
    report = run(cfg, args.models_dir, args.work_dir)
    print(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=2))


if __name__ == "__main__":
    main()
