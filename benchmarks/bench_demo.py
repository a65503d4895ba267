"""The built-in demo model's txt2img time: our engine vs diffusers, side by side in one process on the same weights.

    .venv/bin/python benchmarks/bench_demo.py [--checkpoint models/checkpoints/webui-demo.safetensors] [--repeats 5]
        [--prompt "a red circle on a blue background"] [--seed 0] [--threads N] [--workdir /tmp/webui-bench]

1. Ours: `load_checkpoint` + `generate` with "DPM++ 2M" / "Karras", 20 steps, CFG 7, batch 1, 128x128.
   diffusers: a StableDiffusionPipeline built from the same single file, without the hub: its UNet and VAE
   from diffusers' own converters (configs from `webui/demo_model/architecture.py`), the CLIP text model from
   `convert_ldm_clip_checkpoint`, the tokenizer from `<stem>.tokenizer/` beside the checkpoint, and
   DPMSolverMultistepScheduler (dpmsolver++, order 2, midpoint, Karras sigmas, SD's scaled_linear betas), the
   same method as A1111's "DPM++ 2M" + "Karras".
2. Same start: ours draws its noise from the seed (`ImageRNG`) and starts at noise * sigma_max; diffusers gets
   `latents=` the same noise * sigma_max / sqrt(1 + sigma_max^2), which is that state in its variance-preserving
   space (DPMSolverMultistepScheduler's init_noise_sigma is 1), so the first UNet input is the same on both sides.
   What is left to differ: diffusers rounds the Karras steps' timesteps to integers (ours feeds the UNet the
   fractional ones) and computes its schedule in fp32; the images' mean |difference| in 0..255 is reported.
3. Timing: a warm-up pair (it also gives the images), then --repeats alternating ours/diffusers pairs; per-pair
   ratio ours/diffusers of wall time and CPU-seconds; each side's time split (text encoder, UNet calls, VAE
   decoder, rest) from forward hooks on both sides' modules. On a shared 2-core machine a busy neighbour makes
   single samples swing several-fold, even in CPU-seconds; each sample records the hypervisor's steal time (from
   /proc/stat, all CPUs) beside the load average: use more --repeats, or --threads 1, when they are high.
4. One JSON line, then a human summary.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "DIFFUSERS_NO_ADVISORY_WARNINGS"):
    os.environ[_var] = "1"

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import _measure as m  # noqa: E402

SIZE, STEPS, CFG = 128, 20, 7.0
SAMPLER, SCHEDULER = "DPM++ 2M", "Karras"
IMAGE_AGREEMENT = 2.0  # mean |ours - diffusers| in 0-255 levels up to which the images "agree"
PARTS = ("text", "unet", "vae")


# --- 1. both sides' models ------------------------------------------------------------------------------


def load_diffusers(path: Path, prediction: str):
    """StableDiffusionPipeline from the checkpoint at `path`, mapped by diffusers' own converters into models
    built on the meta device (no random init, no hub); `prediction` ("eps" or "v") as our loader found it."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from tests.engine.models.tiny_checkpoints import ldm_original_config
    from webui.demo_model.architecture import UNET_CONFIG, VAE_CONFIG, text_config
    from webui.engine.models.detection import SD1_TEXT_PREFIX
    from webui.engine.models.text_encoders import _folder_vocab

    sd = m.read_checkpoint(path, torch.float32)
    original = ldm_original_config(UNET_CONFIG, VAE_CONFIG)

    def build(cls, config: dict, converted: dict) -> torch.nn.Module:
        with torch.device("meta"):
            model = cls(**config)
        model.load_state_dict(converted, strict=True, assign=True)
        return model.eval().requires_grad_(False)

    unet_cfg = create_unet_diffusers_config_from_ldm(original, sd)
    unet = build(UNet2DConditionModel, unet_cfg, convert_ldm_unet_checkpoint(sd, unet_cfg))
    vae_cfg = create_vae_diffusers_config_from_ldm(original, sd)
    vae = build(AutoencoderKL, vae_cfg, convert_ldm_vae_checkpoint(sd, vae_cfg))

    vocab_size = sd[SD1_TEXT_PREFIX + "text_model.embeddings.token_embedding.weight"].shape[0]
    tc = text_config(vocab_size)
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=tc.width, intermediate_size=tc.mlp_width, num_hidden_layers=tc.layers,
        num_attention_heads=tc.heads, max_position_embeddings=tc.max_positions, hidden_act=tc.activation,
        layer_norm_eps=1e-5, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    with torch.device("meta"):
        text = CLIPTextModel(config)
    converted = convert_ldm_clip_checkpoint({k: v for k, v in sd.items() if k.startswith(SD1_TEXT_PREFIX)})
    if not hasattr(text, "text_model"):  # transformers >= 5.6: CLIPTextModel is the text model itself
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    missing, _ = text.load_state_dict(converted, strict=False, assign=True)  # position_ids: a buffer
    getattr(text, "text_model", text).embeddings.register_buffer("position_ids", torch.arange(77)[None],
                                                                 persistent=False)
    still_meta = [n for n, t in [*text.named_parameters(), *text.named_buffers()] if t.is_meta]
    if missing or still_meta:
        sys.exit(f"diffusers' text encoder: missing {missing}, left on meta {still_meta}")

    folder = path.with_name(path.stem + ".tokenizer")
    if not (folder / "vocab.json").is_file():
        sys.exit(f"{folder}/vocab.json not found: the demo model's tokenizer sits beside the checkpoint")
    vocab, merges = _folder_vocab(folder)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)  # pads with <|endoftext|>, as SD 1
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", algorithm_type="dpmsolver++",
        solver_order=2, solver_type="midpoint", use_karras_sigmas=True, steps_offset=1,
        prediction_type="v_prediction" if prediction == "v" else "epsilon")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text.eval().requires_grad_(False), tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parameters(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for mod in modules for p in mod.parameters())


# --- 2. time split: forward hooks on each side's networks -------------------------------------------------


class Split:
    """Wall time and call count of each named module's forward calls, accumulated until `reset`."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.seconds = dict.fromkeys(modules, 0.0)
        self.calls = dict.fromkeys(modules, 0)
        for name, module in modules.items():
            module.register_forward_pre_hook(self._start(name))
            module.register_forward_hook(self._stop(name))
        self._t0: dict[str, float] = {}

    def _start(self, name: str) -> Callable:
        def hook(module, args) -> None:
            self._t0[name] = time.perf_counter()
        return hook

    def _stop(self, name: str) -> Callable:
        def hook(module, args, output) -> None:
            self.seconds[name] += time.perf_counter() - self._t0.pop(name)
            self.calls[name] += 1
        return hook

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        self.calls = dict.fromkeys(self.calls, 0)

    def take(self, total: float) -> dict:
        out = {"seconds": {**self.seconds, "rest": total - sum(self.seconds.values())}, "calls": dict(self.calls)}
        self.reset()
        return out


def steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests so far, all CPUs together (/proc/stat; 0 where absent)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = f.readline().split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


# --- 3. generation, timed ------------------------------------------------------------------------------------


def bench(args: argparse.Namespace, bundle, pipe) -> dict:
    from webui.engine.pipelines import PipelineContext, generate
    from webui.engine.pipelines.steps import latent_shape, model_schedule, sampling_sigmas
    from webui.engine.request import GenerationRequest
    from webui.engine.sampling.noise import ImageRNG

    request = GenerationRequest(prompt=args.prompt, width=SIZE, height=SIZE, steps=STEPS, sampler_name=SAMPLER,
                                scheduler=SCHEDULER, cfg_scale=CFG, seed=args.seed)
    ctx = PipelineContext(bundle)
    bundle.file_hash()  # the infotext's model hash: computed once per file, not part of a generation
    sigmas = sampling_sigmas(request, model_schedule(ctx), STEPS)
    sigma_max = sigmas[0].item()
    noise = ImageRNG(latent_shape(ctx, SIZE, SIZE), [args.seed], [0], 0.0).first()  # as txt2img draws it
    latents = noise * sigma_max / (1.0 + sigma_max**2) ** 0.5  # ours' start, noise * sigma_max, in diffusers' space
    calls = {
        "ours": lambda: generate(request, ctx).images[0],
        "ref": lambda: pipe(args.prompt, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=CFG,
                            latents=latents).images[0],
    }
    splits = {
        "ours": Split(dict(zip(PARTS, (bundle.text_encoder.model, bundle.unet, bundle.vae.decoder)))),
        "ref": Split(dict(zip(PARTS, (pipe.text_encoder, pipe.unet, pipe.vae.decoder)))),
    }

    images = {who: call() for who, call in calls.items()}  # the warm-up pair
    for split in splits.values():
        split.reset()
    args.workdir.mkdir(parents=True, exist_ok=True)
    for who, image in images.items():
        image.save(args.workdir / f"bench_demo-{who}.png")
    diff = np.abs(np.asarray(images["ours"], dtype=np.float32) - np.asarray(images["ref"], dtype=np.float32))
    sigma_err = m.rel_max_err(sigmas, pipe.scheduler.sigmas.float())

    samples: dict[str, list[m.Sample]] = {"ours": [], "ref": []}
    split_samples: dict[str, list[dict]] = {"ours": [], "ref": []}
    steal: dict[str, list[float]] = {"ours": [], "ref": []}
    for i in range(args.repeats):  # ours first in even pairs, diffusers first in odd ones: no order bias
        for who in ("ours", "ref") if i % 2 == 0 else ("ref", "ours"):
            steal0 = steal_seconds()
            samples[who].append(s := m.measure(calls[who])[1])
            steal[who].append(steal_seconds() - steal0)
            split_samples[who].append(splits[who].take(s.wall_s))
            print(f"  generation {who} {i}: {s.wall_s:.3f} s, CPU {s.cpu_s:.2f} s, steal {steal[who][-1]:.2f} s",
                  file=sys.stderr)

    wall = {who: [s.wall_s for s in ss] for who, ss in samples.items()}
    out = {
        "image_mean_abs_diff": float(diff.mean()), "image_max_abs_diff": float(diff.max()),
        "sigma_rel_max_err": sigma_err, "sigma_max": sigma_max,
        "images": {who: str(args.workdir / f"bench_demo-{who}.png") for who in images},
        "ratio_wall": m.ratio_spread(wall["ours"], wall["ref"]),
        "ratio_cpu": m.ratio_spread(*([s.cpu_s for s in samples[w]] for w in ("ours", "ref"))),
    }
    for who, ss in samples.items():
        split = {part: statistics.median(x["seconds"][part] for x in split_samples[who]) for part in (*PARTS, "rest")}
        out[who] = {**m.summarize(ss), "median_s": statistics.median(wall[who]), "split_median_s": split,
                    "calls_per_image": split_samples[who][-1]["calls"], "steal_s": steal[who]}
    return out


# --- 4. report ---------------------------------------------------------------------------------------------


def summary(res: dict) -> str:
    g, mach = res["generation"], res["machine"]
    o, f = g["ours"], g["ref"]
    verdict = "agree" if g["image_mean_abs_diff"] <= IMAGE_AGREEMENT else "DIFFER"

    def split(x: dict) -> str:
        s, n = x["split_median_s"], x["calls_per_image"]
        return (f"text encoder {s['text']:.3f} s (x{n['text']}), UNet {s['unet']:.3f} s (x{n['unet']}, "
                f"{s['unet'] / max(n['unet'], 1) * 1000:.1f} ms each), VAE decoder {s['vae']:.3f} s, rest {s['rest']:.3f} s")

    return "\n".join([
        f"bench_demo {res['date']}  {res['checkpoint']}  {mach['cpu']}, {mach['torch_threads']} threads, "
        f"load average {' '.join(f'{x:.1f}' for x in mach['loadavg_start'])} -> "
        f"{' '.join(f'{x:.1f}' for x in mach['loadavg_end'])}",
        f"txt2img {SIZE}x{SIZE}, {STEPS} steps {SAMPLER} {SCHEDULER}, CFG {CFG:g}, batch 1, prompt {res['args']['prompt']!r}, "
        f"seed {res['args']['seed']}; parameters ours {res['parameters']['ours']:,}, diffusers {res['parameters']['ref']:,}",
        f"  ours {o['median_s']:.3f} s per image (CPU {o['cpu_s_median']:.2f} s), diffusers {f['median_s']:.3f} s "
        f"(CPU {f['cpu_s_median']:.2f} s); ratio ours/diffusers {g['ratio_wall']['median']:.3f} "
        f"[{g['ratio_wall']['min']:.3f}-{g['ratio_wall']['max']:.3f}], CPU-s ratio {g['ratio_cpu']['median']:.3f} "
        f"[{g['ratio_cpu']['min']:.3f}-{g['ratio_cpu']['max']:.3f}] ({len(o['samples'])} pairs)",
        f"  split ours:      {split(o)}",
        f"  split diffusers: {split(f)}",
        f"  images {verdict}: mean |diff| {g['image_mean_abs_diff']:.2f} / 255 (max {g['image_max_abs_diff']:.0f}); "
        f"sigma schedules agree to {g['sigma_rel_max_err']:.1e}; saved as {', '.join(g['images'].values())}",
        f"  load ours {res['load_s']['ours']:.2f} s, diffusers {res['load_s']['ref']:.2f} s (once each, not compared); "
        f"steal time (all CPUs) during the timed samples: {sum(o['steal_s']) + sum(f['steal_s']):.1f} s, "
        f"most in one {max(o['steal_s'] + f['steal_s']):.1f} s",
    ])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=ROOT / "models/checkpoints/webui-demo.safetensors",
                   help="the demo model; its tokenizer is the folder <stem>.tokenizer/ beside it")
    p.add_argument("--prompt", default="a red circle on a blue background")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5, help="timed ours/diffusers pairs after one warm-up pair")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default 0: torch's default); on a "
                   "busy machine 1 avoids waits on a descheduled thread, which inflate even the CPU-seconds")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/webui-bench"), help="where the two images are saved")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.threads < 0:
        p.error("--repeats must be >= 1 and --threads >= 0")
    if not args.checkpoint.is_file():
        p.error(f"{args.checkpoint} not found")
    return args


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    m.set_up_torch()
    from webui.engine.models.loading import load_checkpoint

    res: dict = {"benchmark": "bench_demo", "date": datetime.datetime.now().isoformat(timespec="seconds"),
                 "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                 "checkpoint": str(args.checkpoint), "machine": m.machine_info(), "load_s": {}}
    with torch.inference_mode():
        t0 = time.perf_counter()
        bundle = load_checkpoint(args.checkpoint)
        res["load_s"]["ours"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        pipe = load_diffusers(args.checkpoint, bundle.spec.prediction)
        res["load_s"]["ref"] = time.perf_counter() - t0
        res["parameters"] = {"ours": parameters(bundle.unet, bundle.vae, bundle.text_encoder.model),
                             "ref": parameters(pipe.unet, pipe.vae, pipe.text_encoder)}
        res["generation"] = bench(args, bundle, pipe)
    m.report(res, started, summary)


if __name__ == "__main__":
    main()
