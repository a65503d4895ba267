"""One sampling step with one ControlNet: our engine vs diffusers on the same full-size random SD 1.5 weights.

    .venv/bin/python benchmarks/bench_controlnet.py [--size 256] [--dtype fp32] [--warmup 1] [--repeats 3]

1. Random weights in the original layout (`random_state_dict_meta`: every tensor random, the zero
   convolutions too, so no residual is skipped): the SD 1.5 UNet (`model.diffusion_model.*`) and an SD 1.5
   ControlNet (`control_model.*`, hint convolutions 3 -> ... -> 320). Ours: `ControlNet` + `UNetModel`
   loaded from them; diffusers: `ControlNetModel` + `UNet2DConditionModel` mapped by diffusers' own
   converters (tests/extensions/builtin/controlnet/tiny.py, tests/engine/models/reference.py).
2. A step (batch 2, as with CFG; one hint image per sample): the ControlNet's forward, then the UNet's with
   its residuals. The UNet alone and the ControlNet alone are timed too, so each side's ControlNet overhead
   (step with / step without) is measured in the same run. Ours and diffusers alternate per pair (the order
   swapped every round) after warm-up; per-pair ratios ours/diffusers of wall time and CPU-seconds.
3. Agreement: relative max error of the final UNet outputs, with and without the ControlNet (and the
   largest over the residuals); FLOPs of each call counted on meta copies. `--profile controlnet_step`
   prints the ops that took the most time.
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

import torch  # noqa: E402

from benchmarks import _measure as m  # noqa: E402
from benchmarks.bench_models import AGREEMENT, DTYPES, PUBLISHED  # noqa: E402

WHO = ("ours", "ref")
# The calls timed: the step with the ControlNet, the UNet alone, the ControlNet alone.
KINDS = ("controlnet_step", "unet_step", "controlnet_alone")
RESIDUALS_MATTER = 1e-2  # the ControlNet must change the UNet's output by more than this (relative max)


# --- 1. the networks ---------------------------------------------------------------------------------------


def build_networks(seed: int) -> dict[str, dict[str, torch.nn.Module]]:
    """{"ours": {"controlnet", "unet"}, "ref": {...}} in fp32, each side with its own copy of the same weights."""
    from extensions.builtin.controlnet.network import ControlNet, ControlNetConfig
    from tests.engine.models.reference import reference_unet
    from tests.engine.models.tiny_checkpoints import Recipe, random_state_dict_meta, unet_config
    from tests.extensions.builtin.controlnet.tiny import controlnet_config, reference_controlnet
    from webui.engine.models.unet import UNetModel

    recipe = Recipe("sd1", full_size=True)
    cn_config = ControlNetConfig(unet_config(recipe), "sd1")  # the default hint convolutions end in 320
    if cn_config != controlnet_config(recipe):
        sys.exit(f"ControlNet configs differ: {cn_config} vs the test helper's {controlnet_config(recipe)}")
    with torch.device("meta"):
        ours = {"controlnet": ControlNet(cn_config), "unet": UNetModel(unet_config(recipe))}
    t0 = time.perf_counter()
    originals = {
        "controlnet": {"control_model." + k: v for k, v in random_state_dict_meta(ours["controlnet"], seed).items()},
        "unet": {"model.diffusion_model." + k: v for k, v in random_state_dict_meta(ours["unet"], seed + 1).items()},
    }
    for part, prefix in (("controlnet", "control_model."), ("unet", "model.diffusion_model.")):
        state = {k[len(prefix):]: v.clone() for k, v in originals[part].items()}  # ours gets its own copy
        ours[part].load_state_dict(state, strict=True, assign=True)
        ours[part].eval().requires_grad_(False)
    ref = {"controlnet": reference_controlnet(originals["controlnet"], recipe),
           "unet": reference_unet(originals["unet"], recipe)}
    for net in ref.values():
        net.requires_grad_(False)
    print(f"weights built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return {"ours": ours, "ref": ref}


def parameter_counts(nets: dict) -> dict[str, dict[str, int]]:
    """Parameters per side and network; exits where the UNet is not SD 1.5's or the two sides differ."""
    counts = {who: {part: sum(p.numel() for p in net.parameters()) for part, net in parts.items()}
              for who, parts in nets.items()}
    if counts["ours"] != counts["ref"] or counts["ours"]["unet"] != PUBLISHED["unet"][1]:
        sys.exit(f"parameter counts {counts} differ (SD 1.5 UNet: {PUBLISHED['unet'][1]:,})")
    return counts


def inputs(size: int, dtype: torch.dtype, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    """Latents (2, 4, size/8, size/8), timesteps (2,), context (2, 77, 768), hint (2, 3, size, size) in [0, 1]:
    one CFG step, the same control image for both halves."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, size // 8, size // 8, generator=gen).to(device, dtype)
    context = torch.randn(2, 77, 768, generator=gen).to(device, dtype)
    hint = torch.rand(1, 3, size, size, generator=gen).repeat(2, 1, 1, 1).to(device, dtype)
    return x, torch.tensor([500.0, 500.0], device=device), context, hint


def step_functions(nets: dict, x, t, context, hint) -> dict[str, dict[str, Callable[[], torch.Tensor]]]:
    """{kind: {who: one call}} for the step with the ControlNet and the UNet alone."""
    o, r = nets["ours"], nets["ref"]

    def ours_step() -> torch.Tensor:
        return o["unet"](x, t, context, control=o["controlnet"](x, t, context, hint))

    def ref_residuals() -> list[torch.Tensor]:
        down, mid = r["controlnet"](x, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False)
        return [*down, mid]

    def ref_step() -> torch.Tensor:
        *down, mid = ref_residuals()
        return r["unet"](x, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid, return_dict=False)[0]

    return {
        "controlnet_step": {"ours": ours_step, "ref": ref_step},
        "unet_step": {"ours": lambda: o["unet"](x, t, context),
                      "ref": lambda: r["unet"](x, t, encoder_hidden_states=context, return_dict=False)[0]},
        "controlnet_alone": {"ours": lambda: o["controlnet"](x, t, context, hint), "ref": ref_residuals},
    }


def agreement(ours, ref) -> float:
    """Relative max error of one output, or the largest over a ControlNet's residuals."""
    if isinstance(ours, torch.Tensor):
        return m.rel_max_err(ours, ref)
    if len(ours) != len(ref):
        raise ValueError(f"{len(ours)} residuals vs {len(ref)}")
    return max(m.rel_max_err(a, b) for a, b in zip(ours, ref))


def step_flops(nets: dict, size: int) -> dict[str, dict[str, int]]:
    """FLOPs of each step, counted on meta copies of the four networks (nothing is computed)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    from extensions.builtin.controlnet.network import ControlNet
    from webui.engine.models.unet import UNetModel

    o, r = nets["ours"], nets["ref"]
    with torch.device("meta"):
        meta = {"ours": {"controlnet": ControlNet(o["controlnet"].control_config), "unet": UNetModel(o["unet"].config)},
                "ref": {"controlnet": ControlNetModel.from_config(r["controlnet"].config),
                        "unet": UNet2DConditionModel.from_config(r["unet"].config)}}
    steps = step_functions(meta, *inputs(size, torch.float32, "meta"))
    return {kind: {who: m.count_flops(fn) for who, fn in calls.items()} for kind, calls in steps.items()}


# --- 2. timing ---------------------------------------------------------------------------------------------


def bench_dtype(args: argparse.Namespace, nets: dict, name: str, flops: dict, peak: dict) -> dict:
    dtype = DTYPES[name]
    for parts in nets.values():
        for net in parts.values():
            if net.dtype != dtype:
                net.to(dtype)
    steps = step_functions(nets, *inputs(args.size, dtype))
    repeat = lambda fn: lambda: [fn() for _ in range(args.steps)][-1]  # noqa: E731
    steps = {kind: {who: repeat(fn) for who, fn in calls.items()} for kind, calls in steps.items()}

    outputs = {kind: {who: fn() for who, fn in calls.items()} for kind, calls in steps.items()}  # 1st warm-up
    errors = {kind: agreement(out["ours"], out["ref"]) for kind, out in outputs.items()}
    control_effect = m.rel_max_err(outputs["controlnet_step"]["ref"], outputs["unet_step"]["ref"])
    del outputs
    print(f"  {name}: rel. max error ours vs diffusers {errors}; the ControlNet changes diffusers' output by "
          f"{control_effect:.2e} (relative max)", file=sys.stderr)
    bad = {kind: e for kind, e in errors.items() if e > AGREEMENT[name]}
    if bad:
        sys.exit(f"{name}: ours and diffusers disagree (relative max error {bad} > {AGREEMENT[name]})")
    if control_effect <= RESIDUALS_MATTER:
        sys.exit(f"{name}: the ControlNet's residuals barely change the output ({control_effect:.2e})")
    for _ in range(args.warmup - 1):
        for calls in steps.values():
            for fn in calls.values():
                fn()

    samples = {kind: {who: [] for who in WHO} for kind in KINDS}
    for i in range(args.repeats):  # ours first in even rounds, diffusers first in odd ones: no order bias
        for kind in KINDS:
            for who in WHO if i % 2 == 0 else WHO[::-1]:
                sample = m.measure(steps[kind][who])[1]
                samples[kind][who].append(sample)
                print(f"  {name} {kind} {who} {i}: {sample.wall_s / args.steps:.2f} s, CPU {sample.cpu_s:.1f} s, "
                      f"own peak {m.gib(sample.extra_peak)}", file=sys.stderr)

    wall = {kind: {who: [s.wall_s / args.steps for s in ss] for who, ss in d.items()} for kind, d in samples.items()}
    cpu = {kind: {who: [s.cpu_s / args.steps for s in ss] for who, ss in d.items()} for kind, d in samples.items()}
    result: dict = {"rel_max_err": errors, "control_effect_rel": control_effect}
    for kind in KINDS:
        r = {"ratio_wall": m.ratio_spread(wall[kind]["ours"], wall[kind]["ref"]),
             "ratio_cpu": m.ratio_spread(cpu[kind]["ours"], cpu[kind]["ref"])}
        for who in WHO:
            med = statistics.median(wall[kind][who])
            r[who] = {**m.summarize(samples[kind][who]), "step_s_median": med,
                      "cpu_s_per_step_median": statistics.median(cpu[kind][who]),
                      "gflops": flops[kind][who] / med / 1e9,
                      "fraction_of_fp32_peak": flops[kind][who] / med / 1e9 / peak["best"]}
        result[kind] = r
    # The ControlNet's overhead: per round, step with it / the UNet alone (the same side, the same round).
    result["overhead"] = {who: {"wall": m.ratio_spread(wall["controlnet_step"][who], wall["unet_step"][who]),
                                "cpu": m.ratio_spread(cpu["controlnet_step"][who], cpu["unet_step"][who])}
                          for who in WHO}
    result["model_bytes"] = {who: {part: sum(p.numel() * p.element_size() for p in net.parameters())
                                   for part, net in parts.items()} for who, parts in nets.items()}
    for kind in args.profile:
        for who in WHO:
            print(f"profile of one {name} {kind}, {who}:\n"
                  f"{m.profile_top_ops(steps[kind][who], rows=args.profile_rows)}", file=sys.stderr)
    return result


# --- 3. report ---------------------------------------------------------------------------------------------


def summary(res: dict) -> str:
    f = res["flops_per_step"]
    lines = [f"bench_controlnet {res['date']}  size {res['args']['size']} (latent {res['latent'][2]}x{res['latent'][3]}, "
             f"batch 2)  {res['machine']['cpu']}, {res['machine']['torch_threads']} threads; 4096^2 fp32 matmul "
             f"{res['matmul_peak_gflops']['best']:.0f} GFLOP/s (median {res['matmul_peak_gflops']['median']:.0f}); "
             f"load average {res['machine']['loadavg_start'][0]:.2f} -> {res['machine']['loadavg_end'][0]:.2f}",
             f"parameters: ControlNet {res['params']['ours']['controlnet']:,}, UNet {res['params']['ours']['unet']:,}; "
             f"FLOPs per step: with ControlNet ours {f['controlnet_step']['ours'] / 1e12:.3f} T / diffusers "
             f"{f['controlnet_step']['ref'] / 1e12:.3f} T, UNet alone {f['unet_step']['ours'] / 1e12:.3f} T / "
             f"{f['unet_step']['ref'] / 1e12:.3f} T, ControlNet alone {f['controlnet_alone']['ours'] / 1e12:.3f} T / "
             f"{f['controlnet_alone']['ref'] / 1e12:.3f} T"]
    labels = {"controlnet_step": "ControlNet + UNet step", "unet_step": "UNet alone",
              "controlnet_alone": "ControlNet alone"}
    for name in res["args"]["dtype"]:
        r = res[name]
        lines.append(f"{name}: agreement ours vs diffusers (rel. max error): with ControlNet "
                     f"{r['rel_max_err']['controlnet_step']:.1e}, UNet alone {r['rel_max_err']['unet_step']:.1e}, "
                     f"ControlNet residuals {r['rel_max_err']['controlnet_alone']:.1e}; "
                     f"the ControlNet changes the output by {r['control_effect_rel']:.2f} (relative max)")
        for kind in KINDS:
            k, o, d = r[kind], r[kind]["ours"], r[kind]["ref"]
            lines.append(
                f"  {labels[kind]}: ours {o['step_s_median']:.2f} s ({o['gflops']:.0f} GFLOP/s, "
                f"{o['fraction_of_fp32_peak']:.0%} of fp32 peak), diffusers {d['step_s_median']:.2f} s "
                f"({d['gflops']:.0f} GFLOP/s); ratio ours/diffusers {k['ratio_wall']['median']:.3f} "
                f"[{k['ratio_wall']['min']:.3f}-{k['ratio_wall']['max']:.3f}], CPU-s ratio "
                f"{k['ratio_cpu']['median']:.3f} [{k['ratio_cpu']['min']:.3f}-{k['ratio_cpu']['max']:.3f}]; "
                f"own peak RSS ours {m.gib(o['extra_peak_rss_max'])} vs {m.gib(d['extra_peak_rss_max'])}")
        for who, label in (("ours", "ours"), ("ref", "diffusers")):
            ov = r["overhead"][who]
            lines.append(f"  ControlNet overhead (step with / without), {label}: {ov['wall']['median']:.3f} "
                         f"[{ov['wall']['min']:.3f}-{ov['wall']['max']:.3f}], CPU-s {ov['cpu']['median']:.3f}")
        ratio = r["controlnet_step"]["ratio_wall"]["median"]
        verdict = ("ours is SLOWER by more than 5%" if ratio > 1.05 else
                   "ours is faster" if ratio < 0.95 else "within 5%")
        lines.append(f"  verdict (ControlNet + UNet step, median wall ratio {ratio:.3f}): {verdict}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=256, help="image size in pixels; the latent is size/8 (default 256)")
    p.add_argument("--dtype", default="fp32", help="dtypes, comma-separated (fp32, bf16, fp16); default fp32")
    p.add_argument("--steps", type=int, default=1, help="steps per timed sample (default 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (>= 1: the first checks agreement)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (each: both kinds of step, ours and diffusers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-flops", action="store_true", help="skip counting FLOPs on the meta device")
    p.add_argument("--profile", default="", help=f"print the top ops of one call of each side to stderr, for these "
                   f"kinds (comma-separated: {', '.join(KINDS)})")
    p.add_argument("--profile-rows", type=int, default=15)
    args = p.parse_args(argv)
    args.dtype, args.profile = args.dtype.split(","), [k for k in args.profile.split(",") if k]
    bad = [d for d in args.dtype if d not in DTYPES] + [k for k in args.profile if k not in KINDS]
    if bad or args.size % 64 or args.warmup < 1 or args.repeats < 1 or args.steps < 1:
        # 64: the ControlNet's hint encoder and the UNet's three downsamplings need size/8 divisible by 8
        p.error(f"invalid dtypes or kinds {bad}; --size must be a multiple of 64, --warmup/--repeats/--steps >= 1")
    return args


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    m.set_up_torch()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    res: dict = {"benchmark": "bench_controlnet", "date": date, "args": vars(args), "machine": m.machine_info(),
                 "latent": [2, 4, args.size // 8, args.size // 8]}
    res["matmul_peak_gflops"] = m.matmul_peak_gflops()
    nets = build_networks(args.seed)
    res["params"] = parameter_counts(nets)
    zero = {kind: {who: 0 for who in WHO} for kind in KINDS}
    res["flops_per_step"] = zero if args.no_flops else step_flops(nets, args.size)
    with torch.inference_mode():
        for name in args.dtype:
            res[name] = bench_dtype(args, nets, name, res["flops_per_step"], res["matmul_peak_gflops"])
    m.report(res, started, summary)


if __name__ == "__main__":
    main()
