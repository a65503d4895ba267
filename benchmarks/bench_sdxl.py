"""SDXL base: our engine vs diffusers, side by side in one process on the same full-size random weights.

    .venv/bin/python benchmarks/bench_sdxl.py [--size 512] [--dtype bf16] [--steps 10] [--repeats 3] [--tiny]

1. Creates (or reuses, under --workdir) a random SDXL base checkpoint in sgm's single-file layout, in bf16.
   Ours is `load_checkpoint`; diffusers' UNet, VAE and text encoders are built on the meta device and filled
   from the same tensors with `assign=True` (in bf16 both sides map the same file: no copy is made).
2. UNet step, batch 2 (CFG), context (2, 77, 2048), y (2, 2816): outputs checked to agree first, then
   alternating ours/diffusers; per-pair ratio, CPU-seconds, GFLOP/s (FLOPs counted on meta) vs the matmul peak.
3. Whole generation: our `txt2img` (Euler, "Uniform" schedule = diffusers' EulerDiscreteScheduler with
   timestep_spacing="linspace") vs StableDiffusionXLPipeline with the same components and starting latents,
   batch 1, CFG 5: text encoding + sampling + VAE decode; the images' mean absolute difference is reported.
4. Peak RSS (VmHWM reset before every timed call) per side; one JSON line, then a human summary.
--tiny: the reduced-width SDXL recipe, to check the script in seconds. diffusers never reaches the hub.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "DIFFUSERS_NO_ADVISORY_WARNINGS"):
    os.environ[_var] = "1"

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import _measure as m  # noqa: E402
from benchmarks.bench_models import AGREEMENT, DTYPES  # noqa: E402
from tests.engine.models import tiny_checkpoints as tc  # noqa: E402
from webui.engine.models.unet import UNetModel, timestep_embedding  # noqa: E402
from webui.engine.models.vae import AutoencoderKL  # noqa: E402

PUBLISHED_UNET = 2_567_463_684  # SDXL base UNet parameters
IMAGE_AGREEMENT = {"fp32": 1.0, "bf16": 8.0, "fp16": 4.0}  # mean |ours - diffusers| in 0-255 levels, "roughly equal"
PROMPT, NEGATIVE, CFG = "a photograph of an astronaut riding a horse on the moon", "blurry, low quality", 5.0


# --- 1. the checkpoint and both sides' models ------------------------------------------------------------


def prepare_checkpoint(workdir: Path, recipe: tc.Recipe, seed: int) -> Path:
    """`make_checkpoint(recipe, seed)` in bf16, created once, tensor by tensor (all fp32 at once: 14 GB)."""
    from safetensors.torch import save_file

    path = workdir / f"sdxl{'' if recipe.full_size else '-tiny'}-random-seed{seed}-bf16.safetensors"
    if path.exists():  # reused: delete it after changing tiny_checkpoints
        return path
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"creating {path} ({'6.9 GB, a few minutes' if recipe.full_size else 'tiny'})", file=sys.stderr)
    with torch.device("meta"):
        parts = [("model.diffusion_model.", UNetModel(tc.unet_config(recipe)), seed),
                 ("first_stage_model.", AutoencoderKL(tc.vae_config(recipe)), seed + 1)]
    sd: dict[str, torch.Tensor] = {}
    for prefix, module, part_seed in parts:  # as tc.random_state_dict_meta, one tensor at a time
        gen = torch.Generator().manual_seed(part_seed)
        for k, v in module.state_dict().items():
            sd[prefix + k] = tc.randomize_(torch.empty(v.shape, dtype=torch.float32), k, gen).bfloat16()
    text = tc.sdxl_text_state_dict(recipe, seed + 2)
    for k in list(text):  # popped one by one: the fp32 bigG alone is 2.8 GB
        sd[k] = text[k].bfloat16() if text[k].is_floating_point() else text[k]
        del text[k]
    if not recipe.full_size:  # cheap here: the tensor-by-tensor copy above must stay equal to make_checkpoint
        ref = tc.make_checkpoint(recipe, seed)
        assert sd.keys() == ref.keys() and all(torch.equal(sd[k], v.to(sd[k].dtype)) for k, v in ref.items())
    save_file(sd, str(path.with_suffix(".partial")))
    path.with_suffix(".partial").rename(path)
    return path




def load_diffusers(sd: dict[str, torch.Tensor], recipe: tc.Recipe):
    """StableDiffusionXLPipeline from the checkpoint's tensors `sd`, mapped by diffusers' own converters and
    assigned (not copied) into models built on the meta device."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from tests.engine.models.reference import reference_sdxl_unet, reference_vae
    from webui.engine.models.text_encoders import _standard_vocab

    clip_l, bigg = tc.sdxl_text_sizes(recipe)

    def text_model(cls, size: dict, act: str, convert):
        config = CLIPTextConfig(
            vocab_size=49408, hidden_size=size["width"], intermediate_size=4 * size["width"],
            num_hidden_layers=size["layers"], num_attention_heads=size["width"] // 64, max_position_embeddings=77,
            hidden_act=act, layer_norm_eps=1e-5, projection_dim=size.get("projection", size["width"]),
            bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
        with torch.device("meta"):
            model = cls(config)
        converted = convert(model)
        if not hasattr(model, "text_model"):  # transformers 5's CLIPTextModel is the text model itself
            converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
        missing, _ = model.load_state_dict(converted, strict=False, assign=True)  # position_ids: a buffer
        getattr(model, "text_model", model).embeddings.register_buffer("position_ids", torch.arange(77)[None],
                                                                       persistent=False)
        meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        assert not missing and not meta, (missing, meta)
        return model.eval().requires_grad_(False)

    prefix_l, prefix_g = tc.SDXL_PREFIXES["clip_l"], tc.SDXL_PREFIXES["bigg"]
    text_l = text_model(CLIPTextModel, clip_l, "quick_gelu", lambda _: convert_ldm_clip_checkpoint(
        {k: v for k, v in sd.items() if k.startswith(prefix_l)}, prefix_l))
    text_g = text_model(CLIPTextModelWithProjection, bigg, "gelu",
                        lambda model: convert_open_clip_checkpoint(model, sd, prefix=prefix_g))
    unet, vae = reference_sdxl_unet(sd, recipe), reference_vae(sd, recipe)  # meta + assign=True
    vocab, merges = _standard_vocab()
    pipe = StableDiffusionXLPipeline(
        vae=vae.requires_grad_(False), text_encoder=text_l, text_encoder_2=text_g, unet=unet.requires_grad_(False),
        tokenizer=CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77),
        tokenizer_2=CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, pad_token="!"),  # OpenCLIP pads 0
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         timestep_spacing="linspace"),
        add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def resident_bytes(*modules: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for mod in modules for t in [*mod.parameters(), *mod.buffers()])


# --- 2. UNet step ------------------------------------------------------------------------------------------


def unet_inputs(recipe: tc.Recipe, size: int, dtype: torch.dtype, device: str = "cpu") -> dict[str, torch.Tensor]:
    """One CFG step: latents (2, 4, s/8, s/8), t, context (2, 77, 2048), pooled text (2, 1280), the six size
    numbers, and y = [pooled | their 256-wide embeddings] (2, 2816), as our pipeline builds it."""
    cfg, gen = tc.unet_config(recipe), torch.Generator().manual_seed(0)
    pooled_width = tc.sdxl_text_sizes(recipe)[1]["projection"]
    x = torch.randn(2, 4, size // 8, size // 8, generator=gen)
    context, pooled = torch.randn(2, 77, cfg.context_dim, generator=gen), torch.randn(2, pooled_width, generator=gen)
    time_ids = torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=torch.float32)
    y = torch.cat([pooled, timestep_embedding(time_ids.flatten(), 256).reshape(2, -1)], dim=1)
    out = {k: v.to(device, dtype) for k, v in {"x": x, "context": context, "pooled": pooled, "y": y}.items()}
    return {**out, "t": torch.tensor([500.0, 500.0], device=device), "time_ids": time_ids.to(device)}


def unet_calls(ours: torch.nn.Module, ref: torch.nn.Module, i: dict[str, torch.Tensor]) -> dict:
    return {
        "ours": lambda: ours(i["x"], i["t"], i["context"], i["y"]),
        "ref": lambda: ref(i["x"], i["t"], encoder_hidden_states=i["context"], return_dict=False,
                           added_cond_kwargs={"text_embeds": i["pooled"], "time_ids": i["time_ids"]})[0],
    }


def unet_flops(ours: torch.nn.Module, ref: torch.nn.Module, recipe: tc.Recipe, size: int) -> dict[str, int]:
    """FLOPs of one step of each, counted on meta copies (nothing is computed)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        calls = unet_calls(UNetModel(ours.config), UNet2DConditionModel.from_config(ref.config),
                           unet_inputs(recipe, size, torch.float32, "meta"))
    return {who: m.count_flops(call) for who, call in calls.items()}


def alternate(calls: dict, warmup: int, repeats: int, label: str) -> dict[str, list[m.Sample]]:
    """`warmup` untimed pairs, then `repeats` timed ones; ours first in even pairs, diffusers first in odd ones."""
    for _ in range(warmup):
        calls["ours"](), calls["ref"]()
    samples: dict[str, list[m.Sample]] = {"ours": [], "ref": []}
    for i in range(repeats):
        for who in ("ours", "ref") if i % 2 == 0 else ("ref", "ours"):
            samples[who].append(s := m.measure(calls[who])[1])
            print(f"  {label} {who} {i}: {s.wall_s:.2f} s, CPU {s.cpu_s:.1f} s, VmHWM {m.gib(s.peak_rss)}",
                  file=sys.stderr)
    return samples


def compare(samples: dict[str, list[m.Sample]], models: dict[str, int]) -> dict:
    wall = {who: [s.wall_s for s in ss] for who, ss in samples.items()}
    out = {"ratio_wall": m.ratio_spread(wall["ours"], wall["ref"]),
           "ratio_cpu": m.ratio_spread(*([s.cpu_s for s in samples[w]] for w in ("ours", "ref")))}
    for who, ss in samples.items():
        out[who] = {**m.summarize(ss), "median_s": statistics.median(wall[who]), "model_bytes": models[who]}
    return out


def bench_unet(args, recipe, bundle, pipe, dtype_name: str, peak: dict) -> dict:
    ours, ref = bundle.unet, pipe.unet
    params = {"ours": sum(p.numel() for p in ours.parameters()), "ref": sum(p.numel() for p in ref.parameters())}
    if len(set(params.values())) != 1 or (recipe.full_size and params["ours"] != PUBLISHED_UNET):
        sys.exit(f"UNet parameter counts {params} differ (published SDXL base: {PUBLISHED_UNET:,})")
    flops = unet_flops(ours, ref, recipe, args.size)
    calls = unet_calls(ours, ref, unet_inputs(recipe, args.size, DTYPES[dtype_name]))
    err = m.rel_max_err(calls["ours"](), calls["ref"]())  # also the first warm-up pair
    if err > AGREEMENT[dtype_name]:
        sys.exit(f"our SDXL UNet and diffusers' disagree: relative max error {err:.2e} > {AGREEMENT[dtype_name]}")
    samples = alternate(calls, args.warmup - 1, args.repeats, "UNet step")
    out = {"params": params, "flops_per_step": flops, "rel_max_err": err, "latent": [2, 4, *[args.size // 8] * 2],
           **compare(samples, {"ours": resident_bytes(ours), "ref": resident_bytes(ref)})}
    for who in ("ours", "ref"):
        gflops = flops[who] / out[who]["median_s"] / 1e9
        out[who].update(gflops=gflops, fraction_of_peak=gflops / peak[dtype_name]["best"])
    return out


# --- 3. whole generation -----------------------------------------------------------------------------------


def bench_generation(args, bundle, pipe, dtype_name: str) -> dict:
    from webui.engine.pipelines import PipelineContext, txt2img
    from webui.engine.pipelines.steps import latent_shape, model_schedule, sampling_sigmas
    from webui.engine.request import GenerationRequest
    from webui.engine.sampling.noise import ImageRNG

    size, steps = args.size, args.steps
    request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size, steps=steps,
                                sampler_name="Euler", scheduler="Uniform", cfg_scale=CFG, seed=args.seed, batch_size=1)
    ctx = PipelineContext(bundle)
    bundle.file_hash()  # the infotext's model hash: computed once per file, not part of a generation
    noise = ImageRNG(latent_shape(ctx, size, size), [args.seed], [0], 0.0).first()
    calls = {
        "ours": lambda: txt2img(request, ctx).images[0],
        "ref": lambda: pipe(PROMPT, negative_prompt=NEGATIVE, height=size, width=size, num_inference_steps=steps,
                            guidance_scale=CFG, latents=noise.to(DTYPES[dtype_name])).images[0],
    }
    images = {who: call() for who, call in calls.items()}  # also the first warm-up pair
    for who, image in images.items():
        image.save(args.workdir / f"bench_sdxl-{'tiny-' if args.tiny else ''}{dtype_name}-{who}.png")
    diff = np.abs(np.asarray(images["ours"], dtype=np.float32) - np.asarray(images["ref"], dtype=np.float32))
    sigma_err = m.rel_max_err(sampling_sigmas(request, model_schedule(ctx), steps), pipe.scheduler.sigmas.float())
    if sigma_err > 1e-4:
        print(f"WARNING: the two schedules differ by {sigma_err:.1e}: diffusers interpolates sigma linearly, ours "
              f"log-linearly; they are equal when steps - 1 divides 999 (e.g. 10, 28)", file=sys.stderr)
    samples = alternate(calls, args.warmup - 1, args.repeats, "generation")
    models = {"ours": resident_bytes(bundle.unet, bundle.vae, bundle.text_encoder),
              "ref": resident_bytes(pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2)}
    return {"steps": steps, "size": size, "cfg": CFG, "sigma_rel_max_err": sigma_err,
            "image_mean_abs_diff": float(diff.mean()), "image_max_abs_diff": float(diff.max()),
            **compare(samples, models)}


# --- 4. report ---------------------------------------------------------------------------------------------


def summary(res: dict) -> str:
    a, mach, start = res["args"], res["machine"], res["rss"]["start"]
    lines = [f"bench_sdxl {res['date']}  {'TINY recipe (a check, not a measurement)  ' if a['tiny'] else ''}"
             f"size {a['size']}, {','.join(a['dtype'])}  {mach['cpu']}, {mach['torch_threads']} threads, flags "
             f"{' '.join(mach['cpu_flags']) or '-'}; {res['matmul_n']}^2 matmul "
             + ", ".join(f"{d} {p['best']:.0f} GFLOP/s" for d, p in res["matmul_peak_gflops"].items()),
             "RSS (weights are memory-mapped: they come in on first use): "
             + ", ".join(f"{k} {m.gib(v)}" for k, v in res["rss"].items())]

    def timing(r: dict) -> str:
        o, f = r["ours"], r["ref"]
        return (f"ours {o['median_s']:.2f} s, diffusers {f['median_s']:.2f} s; ratio ours/diffusers "
                f"{r['ratio_wall']['median']:.3f} [{r['ratio_wall']['min']:.3f}-{r['ratio_wall']['max']:.3f}], "
                f"CPU-s ratio {r['ratio_cpu']['median']:.3f} ({o['cpu_s_median']:.1f} vs {f['cpu_s_median']:.1f} s)")

    def memory(r: dict, what: str) -> str:
        o, f = r["ours"], r["ref"]
        alone = [start + x["model_bytes"] + x["extra_peak_rss_max"] for x in (o, f)]
        return (f"  {what} resident ours {m.gib(o['model_bytes'])} vs {m.gib(f['model_bytes'])}; the call's own peak "
                f"{m.gib(o['extra_peak_rss_max'])} vs {m.gib(f['extra_peak_rss_max'])}; VmHWM (both sides' models "
                f"mapped) {m.gib(o['peak_rss_max'])} vs {m.gib(f['peak_rss_max'])}; one side alone would peak near "
                f"{m.gib(alone[0])} vs {m.gib(alone[1])}")

    for name in a["dtype"]:
        if u := res["unet_step"].get(name):
            o, f, tflop = u["ours"], u["ref"], {who: n / 1e12 for who, n in u["flops_per_step"].items()}
            lines += [f"{name} UNet step, batch 2, latent {u['latent'][2]}x{u['latent'][3]}, {tflop['ours']:.3f} TFLOP "
                      f"(diffusers {tflop['ref']:.3f}): ours {o['gflops']:.0f} GFLOP/s ({o['fraction_of_peak']:.0%} of "
                      f"the {name} matmul peak), diffusers {f['gflops']:.0f} GFLOP/s ({f['fraction_of_peak']:.0%}); "
                      f"outputs agree to {u['rel_max_err']:.1e}",
                      "  " + timing(u), memory(u, "UNet")]
        if g := res["generation"].get(name):
            verdict = "agree roughly" if g["image_mean_abs_diff"] <= IMAGE_AGREEMENT[name] else "DIFFER"
            lines += [f"{name} txt2img {g['size']}x{g['size']}, {g['steps']} Euler steps, CFG {g['cfg']}, batch 1 "
                      f"(text + sampling + VAE decode); images {verdict}: mean |diff| {g['image_mean_abs_diff']:.2f}"
                      f" / 255 (max {g['image_max_abs_diff']:.0f}); schedules agree to {g['sigma_rel_max_err']:.1e}",
                      "  " + timing(g), memory(g, "models")]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, help="image size in pixels, latent size/8 (default 512; 64 with --tiny)")
    p.add_argument("--dtype", default="bf16", help="dtypes, comma-separated: bf16 (default), fp32 (needs ~28 GB), fp16")
    p.add_argument("--steps", type=int, default=10, help="sampling steps of the generation (default 10)")
    p.add_argument("--warmup", type=int, default=1, help="untimed pairs first (>= 1: the first checks agreement)")
    p.add_argument("--repeats", type=int, default=3, help="timed ours/diffusers pairs, for steps and generations")
    p.add_argument("--parts", default="step,generation", help="what to run: step, generation or both")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/webui-bench"), help="cache for the checkpoint")
    p.add_argument("--seed", type=int, default=0, help="weights' seed and the generation's seed")
    p.add_argument("--tiny", action="store_true", help="reduced-width SDXL recipe: checks the script in seconds")
    args = p.parse_args(argv)
    args.size = args.size or (64 if args.tiny else 512)
    args.dtype, args.parts = args.dtype.split(","), args.parts.split(",")
    bad = [d for d in args.dtype if d not in DTYPES] + [x for x in args.parts if x not in ("step", "generation")]
    if bad or args.size % 8 or args.warmup < 1 or args.repeats < 1 or args.steps < 1:
        p.error(f"invalid values {bad}; --size must be a multiple of 8, --warmup/--repeats/--steps >= 1")
    return args


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    m.set_up_torch()
    from webui.engine.models.loading import load_checkpoint

    res: dict = {"benchmark": "bench_sdxl", "date": datetime.datetime.now().isoformat(timespec="seconds"),
                 "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                 "machine": m.machine_info(), "unet_step": {}, "generation": {}}
    recipe = tc.Recipe("sdxl", full_size=not args.tiny)
    if "fp32" in args.dtype and recipe.full_size:
        print("WARNING: fp32 holds two full-size SDXL models in fp32 (~28 GB with the text encoders), more than this "
              "24 GB machine has: expect swapping or the OOM killer; bf16 is also ~3x faster here", file=sys.stderr)
    res["checkpoint"] = str(prepare_checkpoint(args.workdir, recipe, args.seed))
    n = res["matmul_n"] = 4096 if recipe.full_size else 1024
    dtypes = sorted({"fp32", *args.dtype})
    peak = res["matmul_peak_gflops"] = {d: m.matmul_peak_gflops(n, dtype=DTYPES[d]) for d in dtypes}
    m.release_free_memory()
    res["rss"] = {"start": m.memory_status()["VmRSS"]}
    with torch.inference_mode():
        for name in args.dtype:
            dtype = DTYPES[name]
            bundle = load_checkpoint(res["checkpoint"], dtype=dtype)
            res["rss"][f"{name} ours loaded"] = m.memory_status()["VmRSS"]
            pipe = load_diffusers(m.read_checkpoint(Path(res["checkpoint"]), dtype), recipe)
            res["rss"][f"{name} both loaded"] = m.memory_status()["VmRSS"]
            print(f"{name}: models loaded, RSS {m.gib(m.memory_status()['VmRSS'])}", file=sys.stderr)
            if "step" in args.parts:
                res["unet_step"][name] = bench_unet(args, recipe, bundle, pipe, name, peak)
            if "generation" in args.parts:
                res["generation"][name] = bench_generation(args, bundle, pipe, name)
            res["rss"][f"{name} end"] = m.memory_status()["VmRSS"]
            del bundle, pipe
            m.release_free_memory()
    res["rss"]["ru_maxrss"] = m.max_rss_bytes()
    m.report(res, started, summary)


if __name__ == "__main__":
    main()
