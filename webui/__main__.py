"""`python -m webui`: the command line.

    python -m webui models                       list the checkpoints found and what each is
    python -m webui generate --prompt "..." --checkpoint NAME --out DIR [options]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from webui.paths import ModelLibrary

ROOT = Path(__file__).resolve().parent.parent
def find_model(name: str, library: ModelLibrary, kind: str, field: str) -> Path:
    """A file given by path (this is a local tool), or a name from the scanned models folder."""
    path = Path(name)
    return path if path.is_file() else library.path(kind, name, field)


def describe(path: Path) -> str:
    from webui.engine.models.loading import inspect_checkpoint
    from webui.errors import ModelLoadError

    try:
        spec = inspect_checkpoint(path)
    except ModelLoadError as exc:
        return f"  {path.name}: cannot be used: {exc.problem}"
    unet = spec.unet
    texts = " + ".join(f"{t.layout} {t.width} wide, {t.layers} layers" for t in spec.text_encoders)
    return (
        f"  {path.name}: {spec.label} (UNet {unet.model_channels} channels x {unet.channel_mult}, "
        f"{unet.in_channels} input channels; text encoder{'s' if spec.text_encoder_2 else ''} {texts})"
    )


def list_models(args: argparse.Namespace) -> int:
    library = ModelLibrary(args.models_dir)
    names = library.names("checkpoints")
    print(f"Checkpoints in {args.models_dir}:")
    if not names:
        print(f"  none yet: put single-file SD 1.x / 2.x / SDXL checkpoints (.safetensors) in "
              f"{args.models_dir / 'checkpoints'}")
    for name in names:
        print(describe(library.path("checkpoints", name)))
    print("\nStart the web UI with `python launch.py`; generate from here with `python -m webui generate --help`.")
    return 0


def generate(args: argparse.Namespace) -> int:
    from PIL import Image

    from webui.app import build_extensions
    from webui.config import LaunchOptions
    from webui.engine.models.depth_estimator import DepthEstimatorStore
    from webui.engine.models.loading import load_checkpoint
    from webui.engine.pipelines import PipelineContext, ProgressEvent, generate as run
    from webui.engine.request import GenerationRequest
    from webui.errors import WebUIError

    def progress(event: ProgressEvent) -> None:
        print(f"\r  batch {event.batch_index + 1}/{event.batch_count} {event.phase} step {event.step}/{event.total_steps}",
              end="", flush=True)

    try:
        fields = {k: v for k, v in vars(args).items() if k in GenerationRequest.__dataclass_fields__ and v is not None}
        for name in ("init_image", "mask", "depth_map"):
            if fields.get(name) is not None:
                fields[name] = Image.open(fields[name])
        if args.controlnet:
            fields["extensions"] = {"controlnet": {"units": [controlnet_unit(spec) for spec in args.controlnet]}}
        request = GenerationRequest(**fields)
        library = ModelLibrary(args.models_dir)
        depth = DepthEstimatorStore(lambda: [library.path("depth", n) for n in library.names("depth")],
                                    lambda: args.models_dir / "depth")
        extensions = build_extensions(LaunchOptions(models_dir=args.models_dir), library, depth)
        extensions.check_request(request)
        checkpoint = find_model(args.checkpoint, library, "checkpoints", "checkpoint")
        vae = find_model(args.vae, library, "vae", "vae") if args.vae else None
        print(f"Loading {checkpoint.name} ...", flush=True)
        bundle = load_checkpoint(checkpoint, vae_path=vae, prediction=args.prediction)
        print(f"  {bundle.spec.label}, {bundle.spec.prediction} prediction ({bundle.spec.prediction_reason})")
        refiner = None
        if request.refiner_checkpoint:
            refiner_path = find_model(request.refiner_checkpoint, library, "checkpoints", "refiner_checkpoint")
            print(f"Loading the refiner {refiner_path.name} ...", flush=True)
            refiner = load_checkpoint(refiner_path)
        args.out.mkdir(parents=True, exist_ok=True)
        result = run(request, PipelineContext(bundle, on_progress=progress, output_dir=args.out, refiner=refiner,
                                              hooks=extensions.hooks_for_job(), depth_estimator=depth.estimate))
    except (WebUIError, OSError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    print()
    for notice in result.notices:
        print(f"  note: {notice}")
    for path, seed in zip(result.paths, result.seeds):
        print(f"  {path}  (seed {seed})")
    return 0


def controlnet_unit(spec: str) -> dict:
    """`--controlnet MODEL:IMAGE[:PREPROCESSOR[:WEIGHT]]` as a ControlNet unit (the image opened here)."""
    from PIL import Image

    from webui.errors import RequestError

    parts = spec.split(":")
    if len(parts) < 2 or not all(parts[:2]):
        raise RequestError("controlnet", spec, "MODEL:IMAGE[:PREPROCESSOR[:WEIGHT]], e.g. canny-sd15:photo.png:canny:0.8")
    unit = {"model": parts[0], "image": Image.open(parts[1]), "module": parts[2] if len(parts) > 2 else "none"}
    if len(parts) > 3:
        try:
            unit["weight"] = float(parts[3])
        except ValueError as exc:
            raise RequestError("controlnet", spec, "a number as the weight (the fourth part)") from exc
    return unit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m webui", description="Stable Diffusion web UI command line")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models", help="folder with checkpoints/, vae/, ...")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("models", help="list the checkpoints found and what each one is")
    g = sub.add_parser("generate", help="txt2img, img2img, inpaint, outpaint or depth-to-image from the command line, "
                                        "with the extensions (LoRA tags, ControlNet units)")
    g.add_argument("--checkpoint", required=True, help="a name from models/checkpoints, or a file path")
    g.add_argument("--vae", help="a separate VAE: a name from models/vae, or a file path")
    g.add_argument("--prediction", choices=["eps", "v"], help="override the detected prediction type")
    g.add_argument("--out", type=Path, default=ROOT / "outputs", help="output folder (default: outputs/)")
    g.add_argument("--prompt", default="")
    g.add_argument("--negative-prompt", dest="negative_prompt")
    g.add_argument("--steps", type=int)
    g.add_argument("--sampler", dest="sampler_name", help='e.g. "DPM++ 2M", "Euler a", "DDIM"')
    g.add_argument("--scheduler", help='e.g. "Automatic", "Karras", "Exponential"')
    g.add_argument("--cfg-scale", dest="cfg_scale", type=float)
    g.add_argument("--width", type=int)
    g.add_argument("--height", type=int)
    g.add_argument("--seed", type=int, help="-1 = random (the seed used is printed)")
    g.add_argument("--subseed", type=int, help="variation seed")
    g.add_argument("--subseed-strength", dest="subseed_strength", type=float, help="variation strength 0..1")
    g.add_argument("--batch-count", dest="batch_count", type=int)
    g.add_argument("--batch-size", dest="batch_size", type=int)
    g.add_argument("--clip-skip", dest="clip_skip", type=int)
    g.add_argument("--init-image", dest="init_image", help="img2img: the input image")
    g.add_argument("--denoising-strength", dest="denoising_strength", type=float)
    g.add_argument("--resize-mode", dest="resize_mode", help='"Just resize", "Crop and resize", "Resize and fill"')
    g.add_argument("--mask", help="inpaint: a mask image, white = repaint")
    g.add_argument("--mask-blur", dest="mask_blur", type=int)
    g.add_argument("--inpainting-fill", dest="inpainting_fill", help='"fill", "original", "latent noise", "latent nothing"')
    g.add_argument("--only-masked", dest="inpaint_full_res", action="store_const", const=True, help='inpaint area "Only masked"')
    for side in ("left", "right", "top", "bottom"):
        g.add_argument(f"--outpaint-{side}", dest=f"outpaint_{side}", type=int, help=f"outpaint: pixels to add {side}")
    g.add_argument("--depth", action="store_const", const=True,
                   help="depth-to-image: follow the depth of --init-image (estimated by the model in models/depth)")
    g.add_argument("--depth-map", dest="depth_map", help="depth-to-image: a depth map image (white = near)")
    g.add_argument("--controlnet", action="append", metavar="MODEL:IMAGE[:PREPROCESSOR[:WEIGHT]]",
                   help="a ControlNet unit (a name from models/controlnet); may be given several times")
    g.add_argument("--refiner", dest="refiner_checkpoint", help="SDXL: a refiner checkpoint (name or path)")
    g.add_argument("--refiner-switch-at", dest="refiner_switch_at", type=float, help="fraction of steps (default 0.8)")
    g.add_argument("--hires", dest="enable_hr", action="store_const", const=True, help="txt2img: enable the hires fix")
    g.add_argument("--hr-scale", dest="hr_scale", type=float)
    g.add_argument("--hr-upscaler", dest="hr_upscaler")
    g.add_argument("--hr-steps", dest="hr_second_pass_steps", type=int)
    g.add_argument("--hr-denoising-strength", dest="hr_denoising_strength", type=float)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        return generate(args)
    return list_models(args)


if __name__ == "__main__":
    raise SystemExit(main())
