"""Launch options (command line) and persisted settings, as frozen dataclasses; nothing parsed at import."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from webui.engine.memory.attention import BACKENDS
from webui.engine.memory.policy import OFFLOAD_MODES, VAE_TILING_MODES, VRAM_FLAGS
from webui.engine.sampling.registry import SAMPLERS, SCHEDULES
from webui.errors import RequestError
from webui.ui.services import SettingSpec

ROOT = Path(__file__).resolve().parent.parent


class ConfigError(Exception):
    """A launch option that cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class LaunchOptions:
    port: int = 7860
    listen: bool = False  # serve on all network interfaces (0.0.0.0), not only this computer
    share: bool = False  # a public Gradio link
    auth: tuple[tuple[str, str], ...] = ()
    insecure_no_auth: bool = False
    models_dir: Path = ROOT / "models"
    outputs_dir: Path = ROOT / "outputs"
    presets_dir: Path = ROOT / "presets"
    settings_file: Path = ROOT / "settings.json"
    extensions_dir: Path = ROOT / "extensions"  # community extensions; built-ins are in its builtin/ folder
    device: str = "auto"
    precision: str = "auto"
    lowvram: bool = False
    medvram: bool = False
    # The memory flags given, as (setting name, value): each overrides that Settings value.
    memory: tuple[tuple[str, Any], ...] = ()
    api: bool = False
    # REST API logins (HTTP Basic; a login's password alone also works as a bearer token), beside the UI's.
    api_auth: tuple[tuple[str, str], ...] = ()
    enable_insecure_extension_access: bool = False
    theme: str = "system"
    queue_size: int = 64  # jobs waiting at most, all users together
    queue_per_user: int = 16  # jobs one user may have waiting
    max_pixels: int = 4096 * 4096  # width x height x batch size of a job's largest pass (checked before queueing)
    max_body_mb: int = 64  # the largest REST request body (JSON with base64 images)

    @property
    def exposed(self) -> bool:
        """Reachable from other machines: the dangerous features must stay off unless enabled."""
        return self.listen or self.share

    @property
    def extension_access(self) -> bool:
        """Whether extensions may be installed, updated or removed from the UI: only when the app is
        reachable from this computer alone, unless explicitly enabled."""
        return not self.exposed or self.enable_insecure_extension_access

    @property
    def api_enabled(self) -> bool:
        """The REST API: on by default on this computer alone; when exposed, only when asked for (--api)."""
        return self.api or not self.exposed

    @property
    def server_name(self) -> str:
        return "0.0.0.0" if self.listen else "127.0.0.1"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python launch.py",
        description="Stable Diffusion web UI. Starts at http://127.0.0.1:7860 (only this computer can reach it).",
    )
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    p.add_argument("--listen", action="store_true", help="serve on the network (0.0.0.0); requires --auth or --auth-file")
    p.add_argument("--share", action="store_true", help="create a public Gradio link; requires --auth or --auth-file")
    p.add_argument("--auth", help='login(s) "user:password", several separated by commas')
    p.add_argument("--auth-file", type=Path, help='a file of "user:password" logins, one per line or comma-separated')
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="allow --listen/--share WITHOUT a login (anyone who can reach it can use it; not recommended)")
    p.add_argument("--models-dir", type=Path, default=ROOT / "models",
                   help="models folder (ours, or an AUTOMATIC1111 or ComfyUI models folder)")
    p.add_argument("--outputs-dir", type=Path, default=ROOT / "outputs", help="where images are saved")
    p.add_argument("--settings-file", type=Path, default=ROOT / "settings.json", help="where Settings are kept")
    p.add_argument("--extensions-dir", type=Path, default=ROOT / "extensions",
                   help="where community extensions are installed (built-ins stay in the app's extensions/builtin)")
    p.add_argument("--device", default="auto", help='"auto" (GPU when there is one), "cpu", "cuda", "cuda:1", "mps"')
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                   help="compute precision (auto: fp16 on GPUs, bf16 on CPUs with native bf16, else fp32)")
    p.add_argument("--lowvram", action="store_true",
                   help="smallest memory use, slowest: sequential offload (for GPUs with 2-4 GB)")
    p.add_argument("--medvram", action="store_true",
                   help="less memory use, a little slower: model offload (for GPUs with 4-6 GB)")
    memory = p.add_argument_group("memory and speed (each overrides its Settings value)")
    memory.add_argument("--attention", choices=BACKENDS,
                        help="attention backend: sdpa (PyTorch's fused kernels), sliced (less memory), reference")
    memory.add_argument("--attention-slice-size", type=int, metavar="N",
                        help="query rows per slice for sliced attention (0: auto from a memory budget)")
    memory.add_argument("--offload", choices=OFFLOAD_MODES,
                        help="where weights wait between uses: none, model (only the network in use on the GPU), "
                             "sequential (layer by layer), auto (from the free GPU memory)")
    memory.add_argument("--vae-tiling", choices=VAE_TILING_MODES,
                        help="tiled VAE: auto (when the image does not fit in memory, or after running out), on, off")
    memory.add_argument("--vae-tile-size", type=int, metavar="PIXELS", help="VAE tile side in pixels (default 512)")
    for component in ("unet", "text-encoder", "vae"):
        memory.add_argument(f"--{component}-precision", choices=["auto", "fp32", "fp16", "bf16"],
                            help=f"the {component.replace('-', ' ')}'s precision (auto: as --precision)")
    memory.add_argument("--no-half-vae", action="store_true", help="run the VAE in fp32 (as --vae-precision fp32)")
    memory.add_argument("--channels-last", action="store_true", default=None,
                        help="UNet in channels-last memory format (faster on some GPUs)")
    memory.add_argument("--compile", action="store_true", default=None,
                        help="torch.compile the UNet (needs a C++ compiler; the first step is slow)")
    p.add_argument("--api", action="store_true",
                   help="serve the REST API (/sdapi/v1, /api/v1) also when exposed; it is on by default locally")
    p.add_argument("--api-auth", help='REST API login(s) "user:password", several separated by commas (HTTP Basic; the '
                                      'password alone also works as a bearer token). The UI\'s logins work too')
    p.add_argument("--queue-size", type=int, default=64, help="jobs that may wait, all users together (default 64)")
    p.add_argument("--queue-per-user", type=int, default=16, help="jobs one user may have waiting (default 16)")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096,
                   help="the most pixels (width x height x batch size) a job may generate at once (default 4096x4096)")
    p.add_argument("--enable-insecure-extension-access", action="store_true",
                   help="allow installing/updating extensions even when the UI is exposed with --listen/--share")
    p.add_argument("--theme", choices=["system", "light", "dark"], default="system", help="colour theme")
    return p


def parse_auth(auth: str | None, auth_file: Path | None) -> tuple[tuple[str, str], ...]:
    entries: list[str] = []
    if auth:
        entries += auth.split(",")
    if auth_file:
        try:
            text = auth_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--auth-file {auth_file}: cannot be read ({exc.strerror})") from exc
        entries += [e for line in text.splitlines() for e in line.split(",")]
    logins = []
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user or not password:
            raise ConfigError('each login must be "user:password" with both parts non-empty')
        logins.append((user, password))
    return tuple(logins)


MEMORY_FLAGS = ("attention", "attention_slice_size", "offload", "vae_tiling", "vae_tile_size", "unet_precision",
                "text_encoder_precision", "vae_precision", "channels_last", "compile")


def memory_flags(args: argparse.Namespace) -> tuple[tuple[str, Any], ...]:
    """The memory settings given on the command line, as (setting name, value)."""
    given = {name: getattr(args, name) for name in MEMORY_FLAGS if getattr(args, name) is not None}
    if args.no_half_vae:
        given["vae_precision"] = "fp32"
    if args.lowvram or args.medvram:
        given.setdefault("offload", VRAM_FLAGS["lowvram" if args.lowvram else "medvram"])
    return tuple(given.items())


def parse_options(argv: list[str] | None = None) -> LaunchOptions:
    args = build_parser().parse_args(argv)
    options = LaunchOptions(
        port=args.port, listen=args.listen, share=args.share, auth=parse_auth(args.auth, args.auth_file),
        insecure_no_auth=args.insecure_no_auth, models_dir=args.models_dir, outputs_dir=args.outputs_dir,
        settings_file=args.settings_file, extensions_dir=args.extensions_dir, device=args.device, precision=args.precision, lowvram=args.lowvram,
        medvram=args.medvram, memory=memory_flags(args), api=args.api, api_auth=parse_auth(args.api_auth, None),
        enable_insecure_extension_access=args.enable_insecure_extension_access, theme=args.theme,
        queue_size=args.queue_size, queue_per_user=args.queue_per_user, max_pixels=args.max_pixels,
    )
    for name in ("queue_size", "queue_per_user", "max_pixels"):
        if getattr(options, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(options, name)}: expected a positive number")
    check_exposure(options)
    try:
        validate_settings(dict(options.memory), Settings())
    except RequestError as exc:
        raise ConfigError(f"--{exc.field.replace('_', '-')} {exc.value}: expected {exc.allowed}") from exc
    return options


def check_exposure(options: LaunchOptions) -> None:
    """Refuse to expose an unauthenticated server by accident."""
    if options.exposed and not options.auth and not options.insecure_no_auth:
        how = "--share makes a public link anyone can open" if options.share else "--listen lets every machine on the network connect"
        raise ConfigError(
            f"Refusing to start: {how}, and no login is set. Add --auth user:password (or --auth-file FILE). "
            "To run without a login anyway, add --insecure-no-auth."
        )


# --- Settings: persisted, changed from the Settings tab -----------------------------------------------------


@dataclass(frozen=True)
class Settings:
    save_images: bool = True
    prompt_in_filename: bool = False
    preview_every: int = 1  # live preview every N steps; 0 = off
    default_sampler: str = "DPM++ 2M"
    default_scheduler: str = "Automatic"
    device: str = "auto"
    precision: str = "auto"
    # Memory and speed (webui.engine.memory.policy): applied from the next generation on.
    unet_precision: str = "auto"
    text_encoder_precision: str = "auto"
    vae_precision: str = "auto"
    attention: str = "sdpa"
    attention_slice_size: int = 0  # 0: auto, from a memory budget
    offload: str = "auto"
    vae_tiling: str = "auto"
    vae_tile_size: int = 512  # pixels
    channels_last: bool = False
    compile: bool = False
    # Depth-to-image without a depth estimator in models/depth: download Intel/dpt-hybrid-midas once online.
    depth_download: bool = True


PRECISION_CHOICES = ("auto", "fp32", "fp16", "bf16")
SETTING_SPECS: tuple[SettingSpec, ...] = (
    SettingSpec("save_images", "Save every generated image to the outputs folder", "bool"),
    SettingSpec("prompt_in_filename", "Put the prompt in file names (00001-<seed>-<prompt>.png)", "bool"),
    SettingSpec("preview_every", "Live preview every N sampling steps (0 = off)", "int", minimum=0, maximum=100),
    SettingSpec("default_sampler", "Default sampler", "choice", tuple(s.name for s in SAMPLERS)),
    SettingSpec("default_scheduler", "Default schedule type", "choice", SCHEDULES),
    SettingSpec("device", "Device (auto, cpu, cuda, cuda:N, mps)", "text", restart_required=True),
    SettingSpec("precision", "Compute precision", "choice", PRECISION_CHOICES,
                help="auto: fp16 on GPUs, bf16 on CPUs that compute it natively, else fp32"),
    SettingSpec("unet_precision", "UNet precision", "choice", PRECISION_CHOICES, help="auto: as Compute precision"),
    SettingSpec("text_encoder_precision", "Text encoder precision", "choice", PRECISION_CHOICES,
                help="auto: as Compute precision"),
    SettingSpec("vae_precision", "VAE precision", "choice", PRECISION_CHOICES,
                help="auto: as Compute precision; an fp16 VAE that overflows is retried in fp32 by itself"),
    SettingSpec("attention", "Attention", "choice", BACKENDS,
                help="sdpa: PyTorch's fused kernels (fast, little memory); sliced: a slice of queries at a time "
                     "(least memory); reference: plain fp32 (for checking)"),
    SettingSpec("attention_slice_size", "Sliced attention: query rows per slice (0 = auto)", "int", minimum=0,
                maximum=1 << 20),
    SettingSpec("offload", "Offload", "choice", OFFLOAD_MODES,
                help="none: all on the GPU; model: only the network in use (saves about the UNet's size); "
                     "sequential: layer by layer (smallest, slowest); auto: from the free memory. No effect on CPU"),
    SettingSpec("vae_tiling", "Tiled VAE", "choice", VAE_TILING_MODES,
                help="auto: tiled when the image does not fit in memory, or after running out of memory"),
    SettingSpec("vae_tile_size", "Tiled VAE: tile size in pixels", "int", minimum=128, maximum=4096),
    SettingSpec("channels_last", "UNet in channels-last memory format", "bool"),
    SettingSpec("compile", "torch.compile the UNet (slow first generation)", "bool"),
    SettingSpec("depth_download", "Download the depth estimator when none is installed", "bool",
                help="for the depth tab and ControlNet's depth preprocessor: when models/depth holds no DPT model, "
                     "fetch Intel/dpt-hybrid-midas (about 500 MB) from the Hugging Face hub once, into models/depth"),
)


def validate_settings(values: dict[str, Any], current: Settings) -> Settings:
    """`current` with `values` applied; a bad value raises RequestError naming the setting."""
    specs = {s.name: s for s in SETTING_SPECS}
    changes = {}
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None:
            raise RequestError(name, value, "a known setting (" + ", ".join(specs) + ")")
        if spec.kind == "bool" and not isinstance(value, bool):
            raise RequestError(name, value, "true or false")
        if spec.kind == "int":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
                raise RequestError(name, value, f"an integer from {spec.minimum:g} to {spec.maximum:g}")
            value = int(value)
            if not spec.minimum <= value <= spec.maximum:
                raise RequestError(name, value, f"an integer from {spec.minimum:g} to {spec.maximum:g}")
        if spec.kind == "choice" and value not in spec.choices:
            raise RequestError(name, value, "one of " + ", ".join(spec.choices))
        if spec.kind == "text" and (not isinstance(value, str) or not value.strip() or len(value) > 100):
            raise RequestError(name, value, "a short text")
        changes[name] = value
    return replace(current, **changes)


class SettingsStore:
    """Settings read from and written (atomically) to a JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.current = self._read()

    def _read(self) -> Settings:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return Settings()
        except (OSError, ValueError) as exc:
            print(f"Warning: settings file {self.path} is unreadable ({exc}); using defaults")
            return Settings()
        known = {f.name for f in fields(Settings)}
        try:
            return validate_settings({k: v for k, v in data.items() if k in known}, Settings())
        except RequestError as exc:
            print(f"Warning: settings file {self.path}: {exc}; using defaults")
            return Settings()

    def save(self, values: dict[str, Any]) -> list[str]:
        """Apply and persist; returns notes for settings that need a restart."""
        updated = validate_settings(values, self.current)
        notes = [
            f"{spec.label}: takes effect after a restart"
            for spec in SETTING_SPECS
            if spec.restart_required and getattr(updated, spec.name) != getattr(self.current, spec.name)
        ]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(self.path.name + ".tmp")
        temp.write_text(json.dumps(asdict(updated), indent=2), encoding="utf-8")
        os.replace(temp, self.path)
        self.current = updated
        return notes or ["Settings saved."]
