"""Speed and peak memory, section by section: our engine vs diffusers on the same full-size random SD 1.5 weights.

    nice -n 19 .venv/bin/python benchmarks/bench_memory.py [--only unet,vae,e2e,text] [--size 512]
        [--dtype fp32,bf16] [--attention sdpa,sliced] [--vae-sizes 512,1024] [--steps 20]
        [--warmup 1] [--repeats 3] [--e2e-repeats 1]

Both sides are loaded once, in fp32, from the checkpoint `bench_models.prepare_checkpoints` makes (reused
under --workdir). Every section runs its calls in one process in rounds, each call once per round, the
order rotated by one each round (no call always goes first), after --warmup untimed rounds; it reports
per-round ratios ours/diffusers (min/median/max) of wall time, CPU-seconds and the call's own peak RSS
(VmHWM reset before each call, after free heap pages are given back; "own peak" = VmHWM - RSS before).

1. unet: one UNet step, batch 2 (CFG), latent size/8, for each --dtype; ours with each --attention
   backend (`set_attention`) vs UNet2DConditionModel with its default (SDPA) processor. FLOPs counted on
   the meta device, GFLOP/s against the fp32 4096^2 matmul peak, outputs checked to agree. Non-fp32 UNets
   are loaded separately, so the fp32 models of the other sections stay exact.
2. vae: decode of one random latent (1, 4, s/8, s/8), already divided by the scale factor, for each
   --vae-sizes: untiled (ours `vae.decode`, diffusers `disable_tiling`) and tiled (ours `tiled_decode`,
   64-latent tiles overlapping by 16; diffusers `enable_tiling`: 64-latent tiles, overlap factor 0.25).
   Max abs differences: untiled vs untiled, tiled vs tiled, each tiled result vs its own untiled one.
   A latent that fits in one tile is decoded untiled by both tilers, so the tiled pair is skipped there.
3. e2e: txt2img, --steps Euler steps, --size, CFG 7, batch 1, fixed seed: our `generate` vs
   StableDiffusionPipeline with EulerDiscreteScheduler from the same local config (timestep_spacing
   "leading", steps_offset 1). Our "DDIM" schedule type gives exactly those sigmas (t = 951, 901, ..., 1
   for 20 steps). Both start from the same ImageRNG noise: ours starts at noise * sigma_max, diffusers
   multiplies the latents it is given by sqrt(1 + sigma_max^2), so it is given noise scaled to start
   equal. Warm-up rounds are 1-step generations; --e2e-repeats timed rounds (~4 min a generation at 512).
4. text: prompt + empty negative, 2 x 77 tokens: our `text_encoder.encode_pieces` (one batch, as
   `encode_prompts` calls it) vs `pipe.encode_prompt` (one call per side), 5 encodes per timed sample.
One JSON line, then a human summary. diffusers never reaches the hub.
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
from typing import Any

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "DIFFUSERS_NO_ADVISORY_WARNINGS"):
    os.environ[_var] = "1"

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import _measure as m  # noqa: E402
from benchmarks.bench_models import (  # noqa: E402
    AGREEMENT, DTYPES, load_diffusers_pipeline, prepare_checkpoints, unet_flops, unet_inputs, write_diffusers_config,
)

SECTIONS = ("unet", "vae", "e2e", "text")
PROMPT, CFG = "a photograph of an astronaut riding a horse on the moon", 7.0
# Our schedule type equal to diffusers' EulerDiscreteScheduler under SD 1.5's config ("leading", offset 1).
E2E_SCHEDULE = "DDIM"
TILE, OVERLAP = 64, 16  # latents; diffusers' defaults for a VAE with sample_size 512
VAE_AGREEMENT = 1e-3  # max |ours - diffusers| of the untiled fp32 decodes, images in about [-1, 1]
TEXT_CALLS = 5  # encodes per timed text sample: one takes ~0.2 s, too short to time alone here


# --- measuring ----------------------------------------------------------------------------------------------


def rounds(calls: dict[str, Callable[[], Any]], warmup: int, repeats: int, label: str,
           warmup_calls: dict[str, Callable[[], Any]] | None = None) -> tuple[dict[str, list[m.Sample]], dict]:
    """`warmup` untimed rounds (of `warmup_calls`, default `calls`), then `repeats` timed rounds, each call once
    per round, the order rotated by one each round. Returns the samples and each call's first timed result."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            (warmup_calls or calls)[name]()
    samples: dict[str, list[m.Sample]] = {name: [] for name in names}
    first: dict[str, Any] = {}
    for i in range(repeats):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            result, sample = m.measure(calls[name])
            first.setdefault(name, result)
            del result
            samples[name].append(sample)
            print(f"  {label} {name} {i}: {sample.wall_s:.2f} s, CPU {sample.cpu_s:.1f} s, "
                  f"own peak {m.gib(sample.extra_peak)}", file=sys.stderr)
    return samples, first


def compare(samples: dict[str, list[m.Sample]], ours: str, ref: str) -> dict:
    """Per-round ratios ours/ref of wall time, CPU-seconds and own peak RSS (None where ref's peak is 0)."""
    o, r = samples[ours], samples[ref]
    field = lambda ss, key: [getattr(s, key) for s in ss]  # noqa: E731
    own_peaks = field(r, "extra_peak")
    return {
        "ratio_wall": m.ratio_spread(field(o, "wall_s"), field(r, "wall_s")),
        "ratio_cpu": m.ratio_spread(field(o, "cpu_s"), field(r, "cpu_s")),
        "ratio_own_peak": m.ratio_spread(field(o, "extra_peak"), own_peaks) if min(own_peaks) > 0 else None,
        "ratio_vmhwm": m.ratio_spread(field(o, "peak_rss"), field(r, "peak_rss")),
    }


def summarized(samples: dict[str, list[m.Sample]]) -> dict[str, dict]:
    return {name: {**m.summarize(ss), "median_s": statistics.median(s.wall_s for s in ss)}
            for name, ss in samples.items()}


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def resident_bytes(*modules: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for mod in modules for t in [*mod.parameters(), *mod.buffers()])


# --- 1. UNet step -------------------------------------------------------------------------------------------


def load_unets(path: Path, config: Path, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Our UNet and diffusers' in `dtype`, loaded apart from the shared fp32 models (converting those would
    round the weights that the other sections use)."""
    from diffusers import UNet2DConditionModel

    from webui.engine.models.loading import load_checkpoint

    ours = load_checkpoint(path, dtype=dtype).unet  # the VAE and text encoder are dropped at once
    ref = UNet2DConditionModel.from_single_file(str(path), config=str(config), subfolder="unet",
                                                local_files_only=True, torch_dtype=dtype)
    return ours, ref.eval().requires_grad_(False)


def bench_unet_dtype(args: argparse.Namespace, ours, ref, name: str, flops: dict[str, int], peak: dict) -> dict:
    """One CFG step of each attention backend of ours and of diffusers' UNet, in rotating rounds."""
    from webui.engine.memory.attention import DEFAULT_ATTENTION, AttentionConfig, set_attention
    from webui.engine.memory.estimate import unet_activation_bytes

    x, t, c = unet_inputs(args.size, DTYPES[name])

    def ours_step(backend: str) -> Callable[[], torch.Tensor]:
        attention = AttentionConfig(backend=backend, slice_size=None)

        def step() -> torch.Tensor:
            set_attention(ours, attention)
            return ours(x, t, c)

        return step

    calls = {f"ours_{backend}": ours_step(backend) for backend in args.attention}
    calls["ref"] = lambda: ref(x, t, encoder_hidden_states=c, return_dict=False)[0]
    samples, outputs = rounds(calls, args.warmup, args.repeats, f"UNet {name}")
    set_attention(ours, DEFAULT_ATTENTION)
    result = summarized(samples)
    for who, r in result.items():
        r["gflops"] = flops["ref" if who == "ref" else "ours"] / r["median_s"] / 1e9
        r["fraction_of_fp32_peak"] = r["gflops"] / peak["best"]
    for backend in args.attention:
        who = f"ours_{backend}"
        err = m.rel_max_err(outputs[who], outputs["ref"])
        estimate = unet_activation_bytes(ours.config, 2, args.size // 8, args.size // 8, 77, DTYPES[name],
                                         AttentionConfig(backend=backend))
        result[who].update(compare(samples, who, "ref"), rel_max_err=err, agrees=err <= AGREEMENT[name],
                           estimate_bytes=estimate)
    return {"model_bytes": {"ours": resident_bytes(ours), "ref": resident_bytes(ref)}, **result}


def bench_unet(args: argparse.Namespace, bundle, pipe, path: Path, config: Path, peak: dict) -> dict:
    # Counted with SDPA; the sliced backend does the same two matmuls per head, in query chunks.
    flops = unet_flops(bundle.unet, pipe.unet, args.size)
    out: dict = {"latent": [2, 4, args.size // 8, args.size // 8], "flops_per_step": flops}
    for name in args.dtype:
        unets = (bundle.unet, pipe.unet) if name == "fp32" else load_unets(path, config, DTYPES[name])
        out[name] = bench_unet_dtype(args, *unets, name, flops, peak)
        del unets
        m.release_free_memory()
    return out


# --- 2. VAE decode ------------------------------------------------------------------------------------------


def bench_vae_size(args: argparse.Namespace, ours, ref, scale: float, size: int, warmup: int) -> dict:
    """Untiled (and, where the latent spans several tiles, tiled) decodes of one latent at `size` pixels."""
    from webui.engine.memory.attention import AttentionConfig
    from webui.engine.memory.estimate import vae_decode_bytes
    from webui.engine.memory.tiling import tiled_decode

    z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(args.seed)) / scale

    def ref_decode(tiled: bool) -> torch.Tensor:
        if tiled:
            ref.enable_tiling()
        else:
            ref.disable_tiling()
        return ref.decode(z).sample

    calls = {"ours": lambda: ours.decode(z), "ref": lambda: ref_decode(False)}
    tiled = size // 8 > TILE
    if tiled:
        calls.update(ours_tiled=lambda: tiled_decode(ours, z, TILE, OVERLAP), ref_tiled=lambda: ref_decode(True))
    samples, outputs = rounds(calls, warmup, args.repeats, f"VAE {size}")
    ref.disable_tiling()
    err = max_abs(outputs["ours"], outputs["ref"])
    estimate = vae_decode_bytes(ours.config, 1, size // 8, size // 8, ours.dtype, AttentionConfig())
    result = {"latent": list(z.shape), "scale_factor": scale, "tiled": tiled, "estimate_bytes": estimate,
              **summarized(samples),
              "untiled": {**compare(samples, "ours", "ref"), "max_abs_diff": err, "agrees": err <= VAE_AGREEMENT,
                          "rel_max_err": m.rel_max_err(outputs["ours"], outputs["ref"])}}
    if tiled:
        result["tiled_vs"] = {
            **compare(samples, "ours_tiled", "ref_tiled"),
            "max_abs_diff": max_abs(outputs["ours_tiled"], outputs["ref_tiled"]),
            "ours_tiled_vs_ours_untiled": max_abs(outputs["ours_tiled"], outputs["ours"]),
            "ref_tiled_vs_ref_untiled": max_abs(outputs["ref_tiled"], outputs["ref"]),
        }
    return result


def bench_vae(args: argparse.Namespace, bundle, pipe) -> dict:
    ours, ref = bundle.vae, pipe.vae
    ref_tiles = {"tile": ref.tile_latent_min_size, "overlap": int(ref.tile_latent_min_size * ref.tile_overlap_factor)}
    if ref_tiles != {"tile": TILE, "overlap": OVERLAP}:
        print(f"WARNING: diffusers tiles {ref_tiles} differ from ours ({TILE}, {OVERLAP})", file=sys.stderr)
    out: dict = {"ours_tiles": {"tile": TILE, "overlap": OVERLAP}, "ref_tiles": ref_tiles,
                 "model_bytes": {"ours": resident_bytes(ours), "ref": resident_bytes(ref)}}
    scale = bundle.spec.vae.scale_factor
    for i, size in enumerate(args.vae_sizes):  # warm-up once: the later sizes find the weights paged in
        out[str(size)] = bench_vae_size(args, ours, ref, scale, size, args.warmup if i == 0 else 0)
        m.release_free_memory()
    return out


# --- 3. whole txt2img ---------------------------------------------------------------------------------------


def bench_e2e(args: argparse.Namespace, bundle, pipe) -> dict:
    from diffusers import EulerDiscreteScheduler

    from webui.engine.pipelines import PipelineContext, generate
    from webui.engine.pipelines.steps import latent_shape, model_schedule, sampling_sigmas
    from webui.engine.request import GenerationRequest
    from webui.engine.sampling.noise import ImageRNG

    size, ctx = args.size, PipelineContext(bundle)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    bundle.file_hash()  # the infotext's model hash: computed once per file, not part of a generation
    noise = ImageRNG(latent_shape(ctx, size, size), [args.seed]).first()

    def generations(steps: int) -> tuple[dict[str, Callable[[], Any]], float]:
        """Both sides' generation of `steps` steps, and how far apart their sigmas are (relative)."""
        request = GenerationRequest(prompt=PROMPT, negative_prompt="", steps=steps, width=size, height=size,
                                    cfg_scale=CFG, sampler_name="Euler", scheduler=E2E_SCHEDULE, seed=args.seed)
        sigmas = sampling_sigmas(request, model_schedule(ctx), steps)
        pipe.scheduler.set_timesteps(steps)  # as the pipeline will: gives init_noise_sigma
        sigma_err = m.rel_max_err(sigmas, pipe.scheduler.sigmas.float())
        start = noise * (sigmas[0] / pipe.scheduler.init_noise_sigma)  # diffusers multiplies it back
        calls = {
            "ours": lambda: generate(request, ctx).images[0],
            "ref": lambda: pipe(PROMPT, negative_prompt="", height=size, width=size, num_inference_steps=steps,
                                guidance_scale=CFG, latents=start.clone()).images[0],
        }
        return calls, sigma_err

    warmup_calls, _ = generations(1)
    calls, sigma_err = generations(args.steps)
    samples, images = rounds(calls, args.warmup, args.e2e_repeats, "txt2img", warmup_calls)
    for who, image in images.items():
        image.save(args.workdir / f"bench_memory-{size}-{who}.png")
    diff = np.abs(np.asarray(images["ours"], dtype=np.float32) - np.asarray(images["ref"], dtype=np.float32))
    return {
        "steps": args.steps, "size": size, "cfg": CFG, "sampler": "Euler", "schedule": E2E_SCHEDULE,
        "ref_scheduler": {k: pipe.scheduler.config[k]
                          for k in ("timestep_spacing", "steps_offset", "interpolation_type")},
        "sigma_rel_max_err": sigma_err,
        "image_max_abs_diff": float(diff.max()), "image_mean_abs_diff": float(diff.mean()),
        "model_bytes": {"ours": resident_bytes(bundle.unet, bundle.vae, bundle.text_encoder),
                        "ref": resident_bytes(pipe.unet, pipe.vae, pipe.text_encoder)},
        **summarized(samples), "ours_vs_ref": compare(samples, "ours", "ref"),
    }


# --- 4. text encoding ---------------------------------------------------------------------------------------


def bench_text(args: argparse.Namespace, bundle, pipe) -> dict:
    from webui.engine.pipelines import PipelineContext
    from webui.engine.pipelines.steps import parse_prompts
    from webui.engine.request import GenerationRequest

    request = GenerationRequest(prompt=PROMPT, negative_prompt="")
    positive, negative = parse_prompts(PipelineContext(bundle), request)
    texts = list(dict.fromkeys([*positive.texts(), *negative.texts()]))  # as encode_prompts: one batch
    te = bundle.text_encoder
    ours_ids = [te.chunks_of(pieces)[0].ids for pieces in texts]
    ref_ids = pipe.tokenizer([PROMPT, ""], padding="max_length", max_length=77, truncation=True).input_ids
    calls = {
        "ours": lambda: [te.encode_pieces(texts, request.clip_skip)[0] for _ in range(TEXT_CALLS)][-1],
        "ref": lambda: [torch.cat(pipe.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt=""))
                        for _ in range(TEXT_CALLS)][-1],
    }
    samples, outputs = rounds(calls, args.warmup, args.repeats, f"text x{TEXT_CALLS}")
    return {"calls_per_sample": TEXT_CALLS, "shape": list(outputs["ours"].shape),
            "same_token_ids": ours_ids == [list(ids) for ids in ref_ids],
            "max_abs_diff": max_abs(outputs["ours"], outputs["ref"]),
            "rel_max_err": m.rel_max_err(outputs["ours"], outputs["ref"]),
            "model_bytes": {"ours": resident_bytes(te), "ref": resident_bytes(pipe.text_encoder)},
            **summarized(samples), "ours_vs_ref": compare(samples, "ours", "ref")}


# --- report -------------------------------------------------------------------------------------------------


def spread_text(s: dict | None) -> str:
    return "n/a" if s is None else f"{s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]"


def timing_line(ours: dict, ref: dict, c: dict, per: float = 1.0) -> str:
    return (f"ours {ours['median_s'] / per:.2f} s, diffusers {ref['median_s'] / per:.2f} s; ratio "
            f"{spread_text(c['ratio_wall'])}, CPU-s {c['ratio_cpu']['median']:.3f}; own peak "
            f"{m.gib(ours['extra_peak_rss_max'])} vs {m.gib(ref['extra_peak_rss_max'])} (ratio "
            f"{spread_text(c['ratio_own_peak'])}); VmHWM {m.gib(ours['peak_rss_max'])} vs {m.gib(ref['peak_rss_max'])}")


def summary(res: dict) -> str:
    a, mach = res["args"], res["machine"]
    lines = [f"bench_memory {res['date']}  {mach['cpu']}, {mach['torch_threads']} threads, flags "
             f"{' '.join(mach['cpu_flags']) or '-'}; fp32 4096^2 matmul {res['matmul_peak_gflops']['best']:.0f} "
             f"GFLOP/s (median {res['matmul_peak_gflops']['median']:.0f}); RSS after loading both sides "
             f"{m.gib(res['rss_loaded'])} (weights memory-mapped: they page in on first use); ratios "
             f"ours/diffusers: median [min-max]"]
    if u := res.get("unet"):
        tflop = {who: n / 1e12 for who, n in u["flops_per_step"].items()}
        lines.append(f"UNet step, batch 2, latent {u['latent'][2]}x{u['latent'][3]}, "
                     f"{tflop['ours']:.3f} TFLOP (diffusers {tflop['ref']:.3f}):")
        for name in a["dtype"]:
            r = u[name]
            ref = r["ref"]
            lines.append(f"  {name}: diffusers {ref['median_s']:.2f} s ({ref['gflops']:.0f} GFLOP/s, "
                         f"{ref['fraction_of_fp32_peak']:.0%} of the fp32 peak)")
            for backend in a["attention"]:
                o = r[f"ours_{backend}"]
                lines.append(f"    ours {backend}: {o['gflops']:.0f} GFLOP/s ({o['fraction_of_fp32_peak']:.0%}); "
                             f"{timing_line(o, ref, o)}; outputs {'agree' if o['agrees'] else 'DISAGREE'} "
                             f"({o['rel_max_err']:.1e} rel); our estimate of its activations "
                             f"{m.gib(o['estimate_bytes'])}")
    if v := res.get("vae"):
        lines.append(f"VAE decode, batch 1 (tiles: ours {v['ours_tiles']}, diffusers {v['ref_tiles']}):")
        for size in a["vae_sizes"]:
            r = v[str(size)]
            u_ = r["untiled"]
            lines.append(f"  {size}px untiled: {timing_line(r['ours'], r['ref'], u_)}; max |diff| "
                         f"{u_['max_abs_diff']:.1e} ({'agree' if u_['agrees'] else 'DISAGREE'} to {VAE_AGREEMENT:g}); "
                         f"our estimate of its activations {m.gib(r['estimate_bytes'])}")
            if r["tiled"]:
                t = r["tiled_vs"]
                lines.append(f"  {size}px tiled:   {timing_line(r['ours_tiled'], r['ref_tiled'], t)}; max |diff| "
                             f"{t['max_abs_diff']:.3f} (blending differs); tiled vs own untiled: ours "
                             f"{t['ours_tiled_vs_ours_untiled']:.3f}, diffusers {t['ref_tiled_vs_ref_untiled']:.3f}")
            else:
                lines.append(f"  {size}px tiled: not run, the latent fits in one {TILE}-latent tile (= untiled)")
    if e := res.get("e2e"):
        lines += [f"txt2img {e['size']}x{e['size']}, {e['steps']} Euler steps ({e['schedule']} schedule = diffusers' "
                  f"'{e['ref_scheduler']['timestep_spacing']}' Euler; sigmas agree to {e['sigma_rel_max_err']:.1e}), "
                  f"CFG {e['cfg']}: images max |diff| {e['image_max_abs_diff']:.0f}, mean "
                  f"{e['image_mean_abs_diff']:.3f} / 255",
                  f"  {timing_line(e['ours'], e['ref'], e['ours_vs_ref'])}"]
    if t := res.get("text"):
        lines += [f"text, prompt + empty negative, 2 x 77 tokens (per encode; token ids "
                  f"{'same' if t['same_token_ids'] else 'DIFFER'}; outputs max |diff| {t['max_abs_diff']:.1e}):",
                  f"  {timing_line(t['ours'], t['ref'], t['ours_vs_ref'], t['calls_per_sample'])}"]
    lines.append("section wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in res["section_s"].items()))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(SECTIONS), help=f"sections, comma-separated: {', '.join(SECTIONS)}")
    p.add_argument("--size", type=int, default=512, help="UNet step and txt2img size in pixels (default 512)")
    p.add_argument("--dtype", default="fp32,bf16", help="UNet step dtypes, comma-separated (fp32, bf16, fp16)")
    p.add_argument("--attention", default="sdpa,sliced", help="our UNet attention backends (sdpa, sliced, reference)")
    p.add_argument("--vae-sizes", default="512,1024", help="VAE decode sizes in pixels, comma-separated")
    p.add_argument("--steps", type=int, default=20, help="txt2img sampling steps (default 20)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (txt2img: 1-step generations); "
                   "with 0, the first timed calls page the memory-mapped weights in, which their peaks include")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds of the unet, vae and text sections")
    p.add_argument("--e2e-repeats", type=int, default=1, help="timed rounds of txt2img (default 1)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/webui-bench"), help="cache for the checkpoint")
    p.add_argument("--seed", type=int, default=0, help="the weights' seed, and the latents' and generation's")
    args = p.parse_args(argv)
    args.only, args.dtype, args.attention = (v.split(",") for v in (args.only, args.dtype, args.attention))
    args.vae_sizes = [int(s) for s in args.vae_sizes.split(",")]
    from webui.engine.memory.attention import BACKENDS

    bad = ([s for s in args.only if s not in SECTIONS] + [d for d in args.dtype if d not in DTYPES]
           + [b for b in args.attention if b not in BACKENDS] + [s for s in args.vae_sizes if s % 8 or s < 64])
    if bad or args.size % 8 or args.warmup < 0 or min(args.repeats, args.e2e_repeats, args.steps) < 1:
        p.error(f"invalid values {bad}; sizes must be multiples of 8 (>= 64), --warmup >= 0, "
                "--repeats/--e2e-repeats/--steps >= 1")
    return args


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    m.set_up_torch()
    from webui.engine.models.loading import load_checkpoint

    res: dict = {"benchmark": "bench_memory", "date": datetime.datetime.now().isoformat(timespec="seconds"),
                 "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                 "machine": m.machine_info(), "section_s": {}}
    paths = prepare_checkpoints(args.workdir, args.seed)
    config = write_diffusers_config(args.workdir, paths["fp32"])
    res["checkpoint"] = str(paths["fp32"])
    res["matmul_peak_gflops"] = m.matmul_peak_gflops()
    bundle = load_checkpoint(paths["fp32"], dtype=torch.float32)
    pipe = load_diffusers_pipeline(paths["fp32"], config)
    pipe.set_progress_bar_config(disable=True)
    # The tokenizer that write_diffusers_config saves has no model_max_length (transformers' "unlimited"
    # default), which diffusers passes to it as max_length: CLIP's is 77.
    pipe.tokenizer.model_max_length = 77
    m.release_free_memory()
    res["rss_loaded"] = m.memory_status()["VmRSS"]
    benches = {"unet": lambda: bench_unet(args, bundle, pipe, paths["fp32"], config, res["matmul_peak_gflops"]),
               "vae": lambda: bench_vae(args, bundle, pipe), "e2e": lambda: bench_e2e(args, bundle, pipe),
               "text": lambda: bench_text(args, bundle, pipe)}
    with torch.inference_mode():
        for section in (s for s in SECTIONS if s in args.only):
            t0 = time.perf_counter()
            print(f"{section}:", file=sys.stderr)
            res[section] = benches[section]()
            res["section_s"][section] = time.perf_counter() - t0
    res["ru_maxrss"] = m.max_rss_bytes()
    m.report(res, started, summary)


if __name__ == "__main__":
    main()
