"""Reading checkpoint files safely: `.safetensors` lazily, pickle formats only as plain weights.

Every failure becomes a `ModelLoadError` that names the file and says what is wrong with it.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from webui.errors import ModelLoadError

SAFETENSORS_SUFFIXES = {".safetensors", ".sft"}
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}


class CheckpointFile:
    """An opened checkpoint: tensor shapes and metadata at once, tensor data only when asked for."""

    def __init__(self, path: Path, shapes: dict[str, tuple[int, ...]], metadata: dict[str, str]) -> None:
        self.path = path
        self.shapes = shapes
        self.metadata = metadata

    def tensor(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def read(self, key: str, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """One tensor converted to `dtype` (floating tensors only) on `device`, one tensor in memory at a time."""
        try:
            t = self.tensor(key)
        except (SafetensorError, RuntimeError, OSError) as exc:
            raise ModelLoadError(self.path, f"tensor '{key}' cannot be read; the file is damaged ({exc})") from exc
        if dtype is not None and t.is_floating_point():
            return t.to(device=device, dtype=dtype)
        return t.to(device=device)

    def close(self) -> None:
        pass

    def __enter__(self) -> CheckpointFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _SafetensorsFile(CheckpointFile):
    def __init__(self, path: Path) -> None:
        try:
            self._handle = safe_open(str(path), framework="pt", device="cpu")
            shapes = {k: tuple(self._handle.get_slice(k).get_shape()) for k in self._handle.keys()}
        except SafetensorError as exc:
            raise ModelLoadError(path, _explain_safetensors_error(exc)) from exc
        super().__init__(path, shapes, dict(self._handle.metadata() or {}))

    def tensor(self, key: str) -> torch.Tensor:
        return self._handle.get_tensor(key)

    def close(self) -> None:
        self._handle = None


class _TensorDictFile(CheckpointFile):
    def __init__(self, path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
        self._tensors = dict(tensors)
        super().__init__(path, {k: tuple(v.shape) for k, v in self._tensors.items()}, {})

    def tensor(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def close(self) -> None:
        self._tensors = {}


def _explain_safetensors_error(exc: Exception) -> str:
    text = str(exc)
    if "IncompleteBuffer" in text or "incomplete" in text.lower():
        return "the file is truncated (shorter than its header says); download or copy it again"
    if "HeaderTooLarge" in text or "HeaderTooSmall" in text or "InvalidHeader" in text:
        return f"not a valid .safetensors file: its header cannot be read ({text})"
    return f"not a valid .safetensors file ({text})"


def _load_pickle_weights(path: Path) -> dict[str, torch.Tensor]:
    """Only plain tensors and containers are accepted (`weights_only=True`): no code ever runs."""
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names what it refused: a global (a function or class: code) or an opcode it cannot read.
        if "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            raise ModelLoadError(
                path,
                "it contains Python objects other than weights, which could run code when loaded; it was refused. "
                "Use a .safetensors version of this model",
            ) from exc
        raise ModelLoadError(path, "not a PyTorch checkpoint (the data cannot be unpickled)") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ModelLoadError(path, f"the file is damaged or truncated, or not a PyTorch checkpoint ({exc})") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and isinstance(obj.get("string_to_param"), dict):  # A1111 embeddings (.pt)
        obj = {f"string_to_param.{k}": v for k, v in obj["string_to_param"].items()}
    if not isinstance(obj, dict):
        raise ModelLoadError(path, f"not a checkpoint: it holds a {type(obj).__name__}, not a dictionary of weights")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks (model hashes in infotexts)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def open_checkpoint(path: str | Path) -> CheckpointFile:
    """Open `path` for reading; raises `ModelLoadError` for missing, empty, damaged or unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(path, "file not found")
    if path.stat().st_size == 0:
        raise ModelLoadError(path, "the file is empty (0 bytes); download or copy it again")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _SafetensorsFile(path)
    if suffix in PICKLE_SUFFIXES:
        return _TensorDictFile(path, _load_pickle_weights(path))
    allowed = ", ".join(sorted(SAFETENSORS_SUFFIXES | PICKLE_SUFFIXES))
    raise ModelLoadError(path, f"unsupported file type '{path.suffix}' (allowed: {allowed})")
