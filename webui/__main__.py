"""`python -m webui`: the command line (for now: inspect the checkpoints in the models folder)."""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_SUFFIXES = {".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft"}


def describe(path: Path) -> str:
    from webui.engine.models.loading import inspect_checkpoint
    from webui.errors import ModelLoadError

    try:
        spec = inspect_checkpoint(path)
    except ModelLoadError as exc:
        return f"  {path.name}: cannot be used: {exc.problem}"
    unet = spec.unet
    return (
        f"  {path.name}: {spec.label} (UNet {unet.model_channels} channels x {unet.channel_mult}, "
        f"{unet.in_channels} input channels; text encoder {spec.text_encoder.layout} "
        f"{spec.text_encoder.width} wide, {spec.text_encoder.layers} layers)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python launch.py", description="Stable Diffusion web UI")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models", help="folder with checkpoints/, vae/, ...")
    args = parser.parse_args(argv)
    folder = args.models_dir / "checkpoints"
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in CHECKPOINT_SUFFIXES)
    print(f"Checkpoints in {folder}:")
    if not files:
        print("  none yet: put single-file SD 1.x / 2.x checkpoints (.safetensors) in this folder")
    for path in files:
        print(describe(path))
    print(
        "\nThe web interface is not built yet. The engine can be used from Python: see "
        "'Use the engine from Python' in README.md."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
