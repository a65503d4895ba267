"""Model loading and UNet step time: our engine vs diffusers on the same full-size random SD 1.5 weights.

    .venv/bin/python benchmarks/bench_models.py [--size 512] [--dtype fp32,bf16] [--warmup 1] [--repeats 3]

1. Creates (or reuses, under --workdir) a random SD 1.5 checkpoint in the original single-file layout,
   fp32 plus an fp16 copy, and checks its parameter counts against the published ones.
2. UNet step (batch 2, as with CFG): ours and diffusers' UNet2DConditionModel in one process,
   alternating, per-pair ratio ours/ref; FLOPs counted on the meta device; outputs checked to agree.
3. Checkpoint load (UNet + VAE + text encoder): each load in a fresh subprocess, alternating, with
   peak RSS after the load and after one UNet step in the same process.
4. One JSON line, then a human summary with the targets (step <= 1.0x, load <= 0.5x, peak RSS <= 1.0x).

diffusers never reaches the hub: its configs are generated into a local folder and loads pass
`local_files_only=True` with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "DIFFUSERS_NO_ADVISORY_WARNINGS"):
    os.environ[_var] = "1"

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import _measure as m  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Relative max error allowed between the two UNets' outputs: beyond it they compute different things.
AGREEMENT = {"fp32": 1e-3, "bf16": 0.1, "fp16": 0.05}
PUBLISHED = {  # parameter counts of SD 1.5, per component prefix in the single file
    "unet": ("model.diffusion_model.", 859_520_964),
    "vae": ("first_stage_model.", 83_653_863),
    "text_encoder": ("cond_stage_model.transformer.", 123_060_480),
}
TARGETS = {"step_time_ratio": 1.0, "load_time_ratio": 0.5, "peak_rss_ratio": 1.0}


# --- 1. the checkpoint and diffusers' local config ----------------------------------------------------


def prepare_checkpoints(workdir: Path, seed: int) -> dict[str, Path]:
    """The fp32 checkpoint and its fp16 copy, created once and reused."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from tests.engine.models.tiny_checkpoints import Recipe, make_checkpoint

    workdir.mkdir(parents=True, exist_ok=True)
    paths = {"fp32": workdir / f"sd15-random-seed{seed}-fp32.safetensors"}
    paths["fp16"] = paths["fp32"].with_name(paths["fp32"].name.replace("fp32", "fp16"))
    if not paths["fp32"].exists():
        print(f"creating {paths['fp32']} (4.3 GB, about a minute)", file=sys.stderr)
        tmp = paths["fp32"].with_suffix(".partial")
        save_file(make_checkpoint(Recipe("sd1", full_size=True), seed), str(tmp))
        tmp.rename(paths["fp32"])
    if not paths["fp16"].exists():
        with safe_open(str(paths["fp32"]), "pt") as f:
            half = {k: (t.half() if t.is_floating_point() else t) for k in f.keys() for t in [f.get_tensor(k)]}
        tmp = paths["fp16"].with_suffix(".partial")
        save_file(half, str(tmp))
        del half
        tmp.rename(paths["fp16"])
    return paths


def parameter_counts(path: Path) -> dict[str, int]:
    """Floating-point parameter counts per component, read from the file header; exits on a mismatch."""
    from safetensors import safe_open

    counts = {name: 0 for name in PUBLISHED}
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            sl = f.get_slice(key)
            if sl.get_dtype() not in ("F32", "F16", "BF16"):
                continue  # e.g. the int64 position_ids buffer
            for name, (prefix, _) in PUBLISHED.items():
                if key.startswith(prefix):
                    counts[name] += int(torch.Size(sl.get_shape()).numel())
    wrong = {n: (counts[n], want) for n, (_, want) in PUBLISHED.items() if counts[n] != want}
    if wrong:
        sys.exit(f"{path}: parameter counts differ from the published SD 1.5 ones (have, want): {wrong}")
    return counts


def write_diffusers_config(workdir: Path, path: Path) -> Path:
    """A local diffusers folder (model_index.json + component configs + tokenizer) for from_single_file."""
    folder = workdir / "sd15-diffusers-config"
    if (folder / "model_index.json").exists():
        return folder
    import diffusers
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )
    from safetensors import safe_open
    from transformers import CLIPTextConfig

    from tests.engine.models.tiny_checkpoints import Recipe, ldm_original_config, unet_config, vae_config
    from webui.engine.models.text_encoders import load_clip_tokenizer

    sd15 = Recipe("sd1", full_size=True)
    with safe_open(str(path), "pt") as f:  # shapes only: the converters look at keys and shapes
        meta = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    original = ldm_original_config(unet_config(sd15), vae_config(sd15))
    with torch.device("meta"):
        UNet2DConditionModel(**create_unet_diffusers_config_from_ldm(original, meta)).save_config(folder / "unet")
        AutoencoderKL(**create_vae_diffusers_config_from_ldm(original, meta)).save_config(folder / "vae")
    CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
    ).save_pretrained(folder / "text_encoder")
    load_clip_tokenizer().save_pretrained(folder / "tokenizer")
    PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    ).save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [None, None],
        "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def load_diffusers_pipeline(path: Path, config: Path, dtype: torch.dtype = torch.float32):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_single_file(
        str(path), config=str(config), local_files_only=True, torch_dtype=dtype,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def unet_inputs(size: int, dtype: torch.dtype, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    """Latents (2, 4, size/8, size/8), timesteps (2,), context (2, 77, 768): one CFG step."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, size // 8, size // 8, generator=gen).to(device, dtype)
    context = torch.randn(2, 77, 768, generator=gen).to(device, dtype)
    return x, torch.tensor([500.0, 500.0], device=device), context


# --- 2. UNet step, both in this process ----------------------------------------------------------------


def unet_flops(ours: torch.nn.Module, ref: torch.nn.Module, size: int) -> dict[str, int]:
    """FLOPs of one step of each UNet, counted on meta copies (nothing is computed)."""
    from diffusers import UNet2DConditionModel

    from webui.engine.models.unet import UNetModel

    with torch.device("meta"):
        ours_meta, ref_meta = UNetModel(ours.config), UNet2DConditionModel.from_config(ref.config)
    x, t, c = unet_inputs(size, torch.float32, "meta")
    return {
        "ours": m.count_flops(lambda: ours_meta(x, t, c)),
        "ref": m.count_flops(lambda: ref_meta(x, t, encoder_hidden_states=c, return_dict=False)),
    }


def bench_unet_steps(args: argparse.Namespace, path: Path, config: Path, peak: dict) -> dict:
    from diffusers import UNet2DConditionModel

    from webui.engine.models.loading import load_checkpoint

    ours = load_checkpoint(path).unet  # the VAE and text encoder are dropped at once
    ref = UNet2DConditionModel.from_single_file(str(path), config=str(config), subfolder="unet", local_files_only=True)
    ref.eval().requires_grad_(False)
    counts = {name: sum(p.numel() for p in net.parameters()) for name, net in (("ours", ours), ("ref", ref))}
    if set(counts.values()) != {PUBLISHED["unet"][1]}:
        sys.exit(f"loaded UNet parameter counts {counts} differ from the published {PUBLISHED['unet'][1]:,}")
    flops = unet_flops(ours, ref, args.size)
    out: dict = {"params": counts, "flops_per_step": flops, "latent": [2, 4, args.size // 8, args.size // 8]}

    for name in args.dtype:
        dtype = DTYPES[name]
        ours.to(dtype), ref.to(dtype)
        x, t, c = unet_inputs(args.size, dtype)
        steps = {
            "ours": lambda: [ours(x, t, c) for _ in range(args.steps)][-1],
            "ref": lambda: [ref(x, t, encoder_hidden_states=c, return_dict=False)[0] for _ in range(args.steps)][-1],
        }
        outputs = {who: step() for who, step in steps.items()}  # also the first warm-up pair
        err = m.rel_max_err(outputs["ours"], outputs["ref"])
        del outputs
        if err > AGREEMENT[name]:
            sys.exit(f"{name}: our UNet and diffusers' disagree (relative max error {err:.2e} > {AGREEMENT[name]})")
        for _ in range(args.warmup - 1):
            steps["ours"](), steps["ref"]()
        samples: dict[str, list[m.Sample]] = {"ours": [], "ref": []}
        for i in range(args.repeats):  # ours first in even pairs, ref first in odd ones: no order bias
            for who in ("ours", "ref") if i % 2 == 0 else ("ref", "ours"):
                samples[who].append(m.measure(steps[who])[1])
                print(f"  {name} {who} step {i}: {samples[who][-1].wall_s / args.steps:.2f} s", file=sys.stderr)
        per_step = {who: [s.wall_s / args.steps for s in ss] for who, ss in samples.items()}
        result = {
            "rel_max_err": err,
            "ratio_wall": m.ratio_spread(per_step["ours"], per_step["ref"]),
            "ratio_cpu": m.ratio_spread([s.cpu_s for s in samples["ours"]], [s.cpu_s for s in samples["ref"]]),
        }
        for who in ("ours", "ref"):
            med = statistics.median(per_step[who])
            result[who] = {
                **m.summarize(samples[who]),
                "step_s_median": med,
                "gflops": flops[who] / med / 1e9,
                "fraction_of_peak": flops[who] / med / 1e9 / peak[name]["best"],  # this dtype's matmul peak
                "model_bytes": sum(p.numel() * p.element_size() for p in (ours if who == "ours" else ref).parameters()),
            }
        for who in ("ours", "ref") if args.profile else ():
            print(f"profile of one {name} step, {who}:\n{m.profile_top_ops(steps[who])}", file=sys.stderr)
        out[name] = result
    return out


# --- 3. checkpoint load, each in a fresh process -------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    """Runs in a subprocess: import, load the checkpoint, one UNet step; prints one JSON line."""
    t0, cpu0 = time.perf_counter(), m.cpu_seconds()
    if args.child == "ours":
        from webui.engine.models.loading import load_checkpoint
    else:
        from diffusers import StableDiffusionPipeline  # noqa: F401  (diffusers imports lazily)
    report: dict = {"import_s": time.perf_counter() - t0, "import_cpu_s": m.cpu_seconds() - cpu0}
    m.set_up_torch()
    m.reset_peak_rss()
    report["rss_before_load"] = m.memory_status()["VmRSS"]
    t0, cpu0 = time.perf_counter(), m.cpu_seconds()
    if args.child == "ours":
        bundle = load_checkpoint(args.child_file, dtype=torch.float32)  # kept whole, like the pipeline
        step = lambda x, t, c: bundle.unet(x, t, c)  # noqa: E731
    else:
        pipe = load_diffusers_pipeline(args.child_file, args.config_dir)
        step = lambda x, t, c: pipe.unet(x, t, encoder_hidden_states=c, return_dict=False)[0]  # noqa: E731
    report.update(load_s=time.perf_counter() - t0, load_cpu_s=m.cpu_seconds() - cpu0)
    report["after_load"] = m.memory_status()  # VmHWM here is the load's peak
    if args.size:  # the first step also pages in the memory-mapped weights
        m.release_free_memory()
        m.reset_peak_rss()
        x, t, c = unet_inputs(args.size, torch.float32)
        t0 = time.perf_counter()
        with torch.inference_mode():
            step(x, t, c)
        report["step_s"] = time.perf_counter() - t0
        report["first_output_s"] = report["load_s"] + report["step_s"]
        report["after_step"] = m.memory_status()  # VmHWM here is the step's peak
    report["peak_rss"] = max(report["after_load"]["VmHWM"], report.get("after_step", {}).get("VmHWM", 0))
    report["ru_maxrss"] = m.max_rss_bytes()
    print(json.dumps(report))


def run_child(who: str, path: Path, config: Path, size: int) -> dict:
    cmd = [sys.executable, __file__, "--child", who, "--child-file", str(path), "--config-dir", str(config),
           "--size", str(size)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"load subprocess ({who}, {path.name}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_load(args: argparse.Namespace, paths: dict[str, Path], config: Path) -> dict:
    out = {}
    for file_dtype in args.load_files:
        path = paths[file_dtype]
        with open(path, "rb") as f:  # warm the page cache so that the first child is not penalised
            while f.read(1 << 26):
                pass
        size = args.size if file_dtype == "fp32" else 0  # the fp16 file: load time and load peak only
        runs: dict[str, list[dict]] = {"ours": [], "ref": []}
        for i in range(args.repeats):
            for who in ("ours", "ref") if i % 2 == 0 else ("ref", "ours"):
                runs[who].append(run_child(who, path, config, size))
                print(f"  load {file_dtype} {who} {i}: {runs[who][-1]['load_s']:.2f} s", file=sys.stderr)
        field = lambda who, key: [r[key] for r in runs[who]]  # noqa: E731
        keys = ["import_s", "load_s", "load_cpu_s", "peak_rss", "ru_maxrss"] + (["first_output_s"] if size else [])
        out[file_dtype] = {
            "file": str(path), "file_bytes": path.stat().st_size, "unet_step_size": size, "runs": runs,
            **{f"ratio_{k}": m.ratio_spread(field("ours", k), field("ref", k)) for k in keys if k != "import_s"},
            **{f"{who}_median": {k: statistics.median(field(who, k)) for k in keys} for who in runs},
        }
    return out


# --- 4. report -------------------------------------------------------------------------------------------


def summary(res: dict) -> str:
    lines = [f"bench_models {res['date']}  size {res['args']['size']}  {res['machine']['cpu']}, "
             f"{res['machine']['torch_threads']} threads, flags {' '.join(res['machine']['cpu_flags']) or '-'}; 4096^2 matmul "
             + ", ".join(f"{d} {p['best']:.0f} GFLOP/s (median {p['median']:.0f})" for d, p in res["matmul_peak_gflops"].items())]
    verdicts = []
    steps = res.get("unet_step")
    if steps:
        lines.append(f"UNet step, batch 2, latent {steps['latent'][2]}x{steps['latent'][3]}, "
                     f"{steps['flops_per_step']['ours'] / 1e12:.3f} TFLOP (ref {steps['flops_per_step']['ref'] / 1e12:.3f}):")
        for name in res["args"]["dtype"]:
            r = steps[name]
            o, f = r["ours"], r["ref"]
            lines.append(
                f"  {name}: ours {o['step_s_median']:.2f} s ({o['gflops']:.0f} GFLOP/s, {o['fraction_of_peak']:.0%} of {name} peak), "
                f"diffusers {f['step_s_median']:.2f} s ({f['gflops']:.0f} GFLOP/s); ratio ours/ref "
                f"{r['ratio_wall']['median']:.3f} [{r['ratio_wall']['min']:.3f}-{r['ratio_wall']['max']:.3f}], "
                f"CPU-s ratio {r['ratio_cpu']['median']:.3f}; activation peak ours {m.gib(o['extra_peak_rss_max'])} "
                f"vs {m.gib(f['extra_peak_rss_max'])}; outputs agree to {r['rel_max_err']:.1e}")
            verdicts.append((f"step time {name}", r["ratio_wall"]["median"], TARGETS["step_time_ratio"]))
    for file_dtype, r in res.get("load", {}).items():
        o, f = r["ours_median"], r["ref_median"]
        lines.append(
            f"Load {file_dtype} file -> fp32 (fresh process, page cache WARM for both): ours {o['load_s']:.2f} s, "
            f"diffusers {f['load_s']:.2f} s; ratio {r['ratio_load_s']['median']:.3f} "
            f"[{r['ratio_load_s']['min']:.3f}-{r['ratio_load_s']['max']:.3f}], CPU-s ratio {r['ratio_load_cpu_s']['median']:.3f}; "
            f"imports ours {o['import_s']:.1f} s vs {f['import_s']:.1f} s")
        if r["unet_step_size"]:
            after = {who: r["runs"][who][-1]["after_step"] for who in ("ours", "ref")}
            lines.append(
                f"  load + first UNet step (weights are memory-mapped and page in on the first step): ours "
                f"{o['first_output_s']:.2f} s vs {f['first_output_s']:.2f} s (ratio {r['ratio_first_output_s']['median']:.3f}); "
                f"resident after it: ours {m.gib(after['ours']['RssAnon'])} anon + {m.gib(after['ours']['RssFile'])} file, "
                f"diffusers {m.gib(after['ref']['RssAnon'])} anon + {m.gib(after['ref']['RssFile'])} file")
        what = "load + one UNet step" if r["unet_step_size"] else "load"
        lines.append(
            f"  peak RSS ({what}): VmHWM ours {m.gib(o['peak_rss'])} vs {m.gib(f['peak_rss'])} "
            f"(ratio {r['ratio_peak_rss']['median']:.3f}); ru_maxrss ours {m.gib(o['ru_maxrss'])} vs {m.gib(f['ru_maxrss'])} "
            f"(ratio {r['ratio_ru_maxrss']['median']:.3f})")
        verdicts.append((f"load time {file_dtype} file", r["ratio_load_s"]["median"], TARGETS["load_time_ratio"]))
        verdicts.append((f"peak RSS (VmHWM) {file_dtype} file", r["ratio_peak_rss"]["median"], TARGETS["peak_rss_ratio"]))
    lines.append("Targets (median ratio ours/diffusers):")
    for label, value, target in verdicts:
        lines.append(f"  {'MET ' if value <= target else 'MISS'} {label}: {value:.3f} (target <= {target})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=512, help="image size in pixels; the latent is size/8 (default 512)")
    p.add_argument("--dtype", default="fp32,bf16", help="UNet step dtypes, comma-separated (fp32, bf16, fp16)")
    p.add_argument("--steps", type=int, default=1, help="UNet steps per timed sample (default 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed ours/ref pairs first (>= 1: it checks agreement)")
    p.add_argument("--repeats", type=int, default=3, help="timed ours/ref pairs, for steps and for loads")
    p.add_argument("--parts", default="step,load", help="what to run: step, load or both")
    p.add_argument("--load-files", default="fp32,fp16", help="checkpoint files to time loading: fp32, fp16")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/webui-bench"), help="cache for the checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="print the top ops of one step of each to stderr")
    p.add_argument("--child", choices=["ours", "ref"], help=argparse.SUPPRESS)
    p.add_argument("--child-file", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--config-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.dtype, args.parts, args.load_files = (v.split(",") for v in (args.dtype, args.parts, args.load_files))
    bad = [d for d in args.dtype if d not in DTYPES] + [f for f in args.load_files if f not in ("fp32", "fp16")]
    if bad or args.size % 8 or args.warmup < 1 or args.repeats < 1 or args.steps < 1:
        p.error(f"invalid values {bad}; --size must be a multiple of 8, --warmup/--repeats/--steps >= 1")
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        return child(args)
    started = time.perf_counter()
    m.set_up_torch()
    res: dict = {"benchmark": "bench_models", "date": datetime.datetime.now().isoformat(timespec="seconds"),
                 "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("child")},
                 "machine": m.machine_info(), "targets": TARGETS}
    paths = prepare_checkpoints(args.workdir, args.seed)
    res["checkpoint"] = {"file": str(paths["fp32"]), "parameters": parameter_counts(paths["fp32"])}
    config = write_diffusers_config(args.workdir, paths["fp32"])
    res["matmul_peak_gflops"] = {d: m.matmul_peak_gflops(dtype=DTYPES[d]) for d in dict.fromkeys(["fp32", *args.dtype])}
    with torch.inference_mode():
        if "step" in args.parts:
            res["unet_step"] = bench_unet_steps(args, paths["fp32"], config, res["matmul_peak_gflops"])
    if "load" in args.parts:
        res["load"] = bench_load(args, paths, config)
        res["load_note"] = "each load in a fresh subprocess; the checkpoint was read just before, so the page cache is warm for both"
    m.report(res, started, summary)


if __name__ == "__main__":
    main()
