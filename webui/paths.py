"""Model folders by kind, and name -> path through the scanned list (never raw paths from users).

Our own layout (`models/checkpoints`, `models/vae`, ...) and the AUTOMATIC1111 (`models/Stable-diffusion`,
`models/VAE`, `models/Lora`) and ComfyUI (`models/checkpoints`, `models/vae`, `models/loras`) layouts
are all recognised, so users can point `--models-dir` at the folder they already have.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from webui.errors import UnknownName

MODEL_SUFFIXES = {".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin"}
FOLDERS = {  # kind -> candidate sub-folders, in order of preference
    "checkpoints": ("checkpoints", "Stable-diffusion"),
    "vae": ("vae", "VAE"),
    "loras": ("loras", "Lora", "LyCORIS"),
    "embeddings": ("embeddings",),
    "controlnet": ("controlnet", "ControlNet"),
    "depth": ("depth",),
}
# Kinds whose models are folders (a model saved by transformers: config.json beside its weights), not files.
FOLDER_KINDS = {"depth"}


def safe_join(root: Path, relative: str) -> Path | None:
    """root / relative if it stays inside root after resolving links and '..', else None."""
    try:
        candidate = (root / relative).resolve()
        return candidate if candidate.is_relative_to(root.resolve()) else None
    except (OSError, ValueError):
        return None


@dataclass
class ModelLibrary:
    """The model files found under a models folder, by kind. `refresh()` rescans."""

    models_dir: Path
    _files: dict[str, dict[str, Path]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.models_dir = Path(self.models_dir)
        self.refresh()

    def folders(self, kind: str) -> list[Path]:
        # A1111/ComfyUI folders also sit beside ours when users point at their installs.
        return [self.models_dir / name for name in FOLDERS[kind] if (self.models_dir / name).is_dir()]

    def refresh(self) -> None:
        self._files = {}
        for kind in FOLDERS:
            found: dict[str, Path] = {}
            for folder in self.folders(kind):
                if kind in FOLDER_KINDS:
                    for path in sorted(folder.iterdir()):
                        if path.is_dir() and (path / "config.json").is_file() and safe_join(folder, path.name):
                            found.setdefault(path.name, path)
                    continue
                for path in sorted(folder.rglob("*")):
                    if path.suffix.lower() in MODEL_SUFFIXES and path.is_file() and safe_join(folder, str(path.relative_to(folder))):
                        found.setdefault(path.relative_to(folder).as_posix(), path)
            self._files[kind] = found

    def names(self, kind: str) -> list[str]:
        """Names (paths relative to their folder, e.g. "sd15/model.safetensors"; for folder kinds the
        model folder's name), sorted."""
        return sorted(self._files.get(kind, {}), key=str.lower)

    def path(self, kind: str, name: str, field_name: str = "checkpoint") -> Path:
        """The file for a listed name (also accepted without its extension); anything else is refused."""
        files = self._files.get(kind, {})
        if name in files:
            return files[name]
        by_stem = [p for n, p in files.items() if n.rsplit(".", 1)[0] == name]
        if len(by_stem) == 1:
            return by_stem[0]
        names = self.names(kind)
        stems = {n.rsplit(".", 1)[0]: n for n in names}  # matched without extensions, named with them
        close = [stems[m] for m in difflib.get_close_matches(str(name).rsplit(".", 1)[0], list(stems), n=3, cutoff=0.6)]
        listed = ", ".join(names[:20]) or f"none: put files in {self.models_dir / FOLDERS[kind][0]}"
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownName(field_name, name, f"a name from the {kind} list ({listed}){hint}")
