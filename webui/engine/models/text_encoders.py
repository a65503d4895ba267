"""CLIP text encoders of SD 1.x (CLIP-L), SD 2.x (OpenCLIP-H) and SDXL (CLIP-L, OpenCLIP-bigG) on
`transformers`' CLIPTextModel.

Key convention: the loader strips `cfg.prefix` and passes the rest. SD 1 ("clip" layout, prefix
`cond_stage_model.transformer.`) keys then read `text_model.embeddings.token_embedding.weight`;
SD 2 ("openclip" layout, prefix `cond_stage_model.model.`) keys read `token_embedding.weight`.
SDXL's two encoders are combined by `sdxl_text_encoder.SDXLTextEncoder`.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Collection, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from webui.engine.models.prompt_tokens import Embedding, EmbeddingIndex, TokenChunk, apply_emphasis, build_chunks
from webui.engine.models.specs import TextEncoderConfig
from webui.engine.prompts import Piece, WeightedText

# sdpa matches eager attention to ~1e-7 relative (see the tests) and needs less memory.
ATTN_IMPLEMENTATION = "sdpa"
BPE_FILE = Path(__file__).parent / "clip_tokenizer" / "bpe_simple_vocab_16e6.txt.gz"

_BLOCK_KEY = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")  # OpenCLIP block keys
_LAYER_KEY = re.compile(r"^(?:text_model\.)?encoder\.layers\.(\d+)\.")  # transformers layer keys
_OPENCLIP_TOP = {
    "token_embedding.weight": "embeddings.token_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",  # a bare [P, W] tensor
    "ln_final.weight": "final_layer_norm.weight",
    "ln_final.bias": "final_layer_norm.bias",
}
_OPENCLIP_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
# Present in SD 2 files but unused by SD 2's conditioning (it ends at ln_final, no projection).
_OPENCLIP_UNUSED = ("text_projection", "logit_scale", "attn_mask")
# The pooled projection as `CLIPTextModelWithProjection` names it (SDXL's bigG keeps it).
PROJECTION_KEY = "text_projection.weight"


# --- tokenizer -------------------------------------------------------------------------------


def _bytes_to_unicode() -> list[str]:
    """The characters byte-level BPE uses for bytes, in CLIP's vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = 256 - len(printable)  # control/space bytes map to chr(256 + n) so all are visible
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(shifted)]


def _standard_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """OpenAI CLIP's 49408-entry vocabulary and merges, built like `open_clip.SimpleTokenizer`."""
    lines = gzip.decompress(BPE_FILE.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = _bytes_to_unicode()
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges  # type: ignore[return-value]


def _folder_vocab(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
    return vocab, merges  # type: ignore[return-value]


@lru_cache(maxsize=8)
def _cached_tokenizer(folder: Path | None) -> CLIPTokenizer:
    vocab, merges = _folder_vocab(folder) if folder else _standard_vocab()
    # Built from data, not `from_pretrained`: no hub lookups and no 77-token truncation warnings
    # (we chunk long prompts ourselves).
    return CLIPTokenizer(vocab=vocab, merges=merges)


def load_clip_tokenizer(folder: Path | None = None) -> CLIPTokenizer:
    """The CLIP tokenizer of `folder` (vocab.json + merges.txt) if it has one, else the standard one."""
    if folder is not None and (Path(folder) / "vocab.json").is_file() and (Path(folder) / "merges.txt").is_file():
        return _cached_tokenizer(Path(folder).resolve())
    return _cached_tokenizer(None)


# --- state-dict conversion (pure functions) ---------------------------------------------------


@lru_cache(maxsize=1)
def _installed_key_prefix() -> str:
    """'text_model.' for transformers < 5.6 (wrapped CLIPTextModel), '' for newer releases."""
    tiny = CLIPTextConfig(
        vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
        max_position_embeddings=4, bos_token_id=6, eos_token_id=7, pad_token_id=7,
    )
    with torch.device("meta"):
        keys = CLIPTextModel(tiny).state_dict().keys()
    return "text_model." if any(k.startswith("text_model.") for k in keys) else ""


def openclip_to_transformers(sd: Mapping[str, Tensor], keep_projection: bool = False) -> dict[str, Tensor]:
    """Rename OpenCLIP text keys (prefix removed) to the installed CLIPTextModel's keys.

    `attn.in_proj_*` rows are [q; k; v] and are split into q/k/v_proj. Unknown keys pass through
    unchanged so that a strict load reports them. `keep_projection` keeps `text_projection` P
    ([width, projection], applied as x @ P) as `text_projection.weight` = P transposed, the Linear
    weight of `CLIPTextModelWithProjection` (SDXL's pooled output).
    """
    prefix = _installed_key_prefix()
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if keep_projection and key == "text_projection":
            out[PROJECTION_KEY] = value.t().contiguous()  # x @ P == Linear with weight P^T
            continue
        if key in _OPENCLIP_UNUSED:
            continue
        if key in _OPENCLIP_TOP:
            out[prefix + _OPENCLIP_TOP[key]] = value
            continue
        match = _BLOCK_KEY.match(key)
        if match is None:
            out[key] = value
            continue
        layer, rest = f"{prefix}encoder.layers.{match[1]}.", match[2]
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = rest.rsplit("_", 1)[1]  # "weight" or "bias"
            q, k, v = value.chunk(3, dim=0)  # (3W, ...) -> 3 x (W, ...)
            for name, part in (("q", q), ("k", k), ("v", v)):
                out[f"{layer}self_attn.{name}_proj.{kind}"] = part
            continue
        module, _, param = rest.rpartition(".")
        out[layer + _OPENCLIP_BLOCK.get(module, module) + "." + param] = value
    return out


def hf_clip_to_transformers(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map file keys in HF CLIP naming (with or without `text_model.`) to the installed layout.

    `embeddings.position_ids` is dropped: newer transformers do not save it, and some SD 1 files
    carry a corrupted float copy; the model recreates it as arange(P).
    """
    prefix = _installed_key_prefix()
    return {
        prefix + key.removeprefix("text_model."): value
        for key, value in sd.items()
        if not key.endswith("position_ids")
    }


# --- model -----------------------------------------------------------------------------------


def _text_transformer(model: CLIPTextModel) -> torch.nn.Module:
    """The module holding embeddings/encoder/final_layer_norm (wrapped in transformers < 5.6)."""
    return getattr(model, "text_model", model)


def _hf_config(cfg: TextEncoderConfig, num_layers: int) -> CLIPTextConfig:
    # CLIP-format vocabularies end with <|startoftext|>, <|endoftext|> (49406, 49407 for CLIP).
    bos, eos = cfg.vocab_size - 2, cfg.vocab_size - 1
    return CLIPTextConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.width,
        intermediate_size=cfg.mlp_width,
        num_hidden_layers=num_layers,
        num_attention_heads=cfg.heads,
        max_position_embeddings=cfg.max_positions,
        hidden_act=cfg.activation,
        layer_norm_eps=1e-5,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,  # what transformers' CLIP expects; our own padding uses cfg.pad_token_id
        attn_implementation=ATTN_IMPLEMENTATION,
    )


def _key_report(missing: Collection[str], unexpected: Collection[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(sorted(missing)[:5])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(sorted(unexpected)[:5])})")
    return "; ".join(parts)


def build_clip_text_model(
    cfg: TextEncoderConfig,
    state_dict: Mapping[str, Tensor],
    dtype: torch.dtype,
    device: torch.device | str,
    num_layers: int | None = None,
) -> CLIPTextModel:
    """A CLIPTextModel with `state_dict` (installed key layout) assigned, no random init.

    `num_layers` < cfg.layers builds only the first blocks and drops the rest of the weights (SD 2
    never uses its last block).
    """
    num_layers = cfg.layers if num_layers is None else num_layers
    if not 1 <= num_layers <= cfg.layers:
        raise ValueError(f"num_layers must be in 1..{cfg.layers}, got {num_layers}")
    sd = {}
    for key, value in state_dict.items():
        match = _LAYER_KEY.match(key)
        if match and int(match[1]) >= num_layers and int(match[1]) < cfg.layers:
            continue  # a block we do not build
        sd[key] = value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)

    with torch.device("meta"):  # parameters without storage: the file's tensors are assigned below
        model = CLIPTextModel(_hf_config(cfg, num_layers))
    expected = set(model.state_dict().keys())
    missing, unexpected = expected - sd.keys(), sd.keys() - expected
    if missing or unexpected:
        raise ValueError(f"text encoder weights do not match the expected layout: {_key_report(missing, unexpected)}")
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"text encoder weights do not match the expected shapes: {exc}") from exc

    # Non-persistent buffers are not in the file and still live on the meta device.
    _text_transformer(model).embeddings.position_ids = torch.arange(cfg.max_positions, device=device).expand((1, -1))
    still_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if still_meta:
        raise RuntimeError(f"tensors left without data after loading: {still_meta[:5]}")
    model.eval().requires_grad_(False)
    return model


class SDTextEncoder(torch.nn.Module):
    """Prompt -> conditioning of SD 1/2 (and each of SDXL's encoders), with A1111's 75-token chunking
    and clip skip. With a `projection` (SDXL's bigG) it also gives the pooled output."""

    def __init__(
        self, cfg: TextEncoderConfig, model: CLIPTextModel, tokenizer: CLIPTokenizer,
        projection: torch.nn.Linear | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.projection = projection
        if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no <|startoftext|> / <|endoftext|> tokens")
        self.bos_id: int = tokenizer.bos_token_id
        self.eos_id: int = tokenizer.eos_token_id
        self.pad_id = cfg.pad_token_id
        self.chunk_tokens = cfg.max_positions - 2  # 75 between the start and end tokens
        self.comma_id = tokenizer.get_vocab().get(",</w>")  # for A1111's comma backtracking
        # The block whose output clip skip 1 uses (1-based): the last, or the penultimate for SD 2.
        self.top_layer = cfg.layers - (1 if cfg.default_layer == "penultimate" else 0)
        built = model.config.num_hidden_layers
        if built < self.top_layer:
            raise ValueError(
                f"text model has {built} layers but its '{cfg.default_layer}' output needs {self.top_layer}"
            )
        if projection is not None and built < cfg.layers:
            raise ValueError(f"the pooled output needs all {cfg.layers} layers, but only {built} are built")
        too_big = [i for i in (self.bos_id, self.eos_id, self.pad_id, len(tokenizer) - 1) if i >= cfg.vocab_size]
        if too_big:
            raise ValueError(f"tokenizer ids {too_big} do not fit the text model's vocabulary of {cfg.vocab_size}")

    @property
    def device(self) -> torch.device:
        return _text_transformer(self.model).embeddings.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return _text_transformer(self.model).embeddings.token_embedding.weight.dtype

    def tokenize(self, prompt: str) -> list[int]:
        """Token ids of `prompt` without start/end tokens."""
        return self.tokenizer.encode(prompt, add_special_tokens=False)

    def count_tokens(self, prompt: str) -> int:
        """Number of prompt tokens, excluding start/end (the UI's live counter)."""
        return len(self.tokenize(prompt))

    def chunks_of(self, pieces: Sequence[Piece], embeddings: EmbeddingIndex | None = None) -> list[TokenChunk]:
        """A1111's chunks of weighted pieces (see `prompt_tokens.build_chunks`)."""
        kwargs = {} if embeddings is None else {"embeddings": embeddings}
        return build_chunks(pieces, self.tokenize, bos_id=self.bos_id, eos_id=self.eos_id, pad_id=self.pad_id,
                            comma_id=self.comma_id, chunk_tokens=self.chunk_tokens, **kwargs)

    def tokenize_chunks(self, prompt: str) -> list[list[int]]:
        """A1111-style chunks of `prompt`: [BOS, <=75 tokens, EOS, padding], 77 ids each."""
        return [chunk.ids for chunk in self.chunks_of([WeightedText(prompt)])]

    def embedding_index(self, embeddings: Sequence[Embedding], widths: Sequence[int] | None = None) -> EmbeddingIndex:
        """The embeddings usable here: those with vectors for every width in `widths` (default: this one)."""
        widths = [self.cfg.width] if widths is None else widths
        return EmbeddingIndex([e for e in embeddings if all(w in e.vectors for w in widths)], self.tokenize)

    def _check_clip_skip(self, clip_skip: int) -> None:
        # Only block outputs are selectable, never the raw embeddings.
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or not 1 <= clip_skip <= self.top_layer:
            raise ValueError(f"clip_skip must be an integer in 1..{self.top_layer} for this model, got {clip_skip!r}")

    @torch.inference_mode()
    def encode_chunks(self, ids: Tensor, clip_skip: int = 1) -> Tensor:
        """(N, 77) token ids -> (N, 77, width) conditioning in the model's dtype."""
        return self._run(ids, clip_skip, pooled=False)[0]

    @torch.inference_mode()
    def encode_chunks_pooled(self, ids: Tensor, clip_skip: int = 1) -> tuple[Tensor, Tensor]:
        """(N, 77) ids -> ((N, 77, width) conditioning, (N, projection_dim) pooled output).

        pooled = final_layer_norm(last block)[first end token] @ P, whatever the clip skip (as sgm).
        """
        features, pooled = self._run(ids, clip_skip, pooled=True)
        assert pooled is not None
        return features, pooled

    def _run_chunks(self, chunks: Sequence[TokenChunk], clip_skip: int, pooled: bool) -> tuple[Tensor, Tensor | None]:
        """Chunks -> ((N, 77, width) features with embeddings and emphasis applied, pooled or None)."""
        ids = torch.tensor([chunk.ids for chunk in chunks], dtype=torch.long)
        fixes = [(row, position, embedding) for row, chunk in enumerate(chunks) for position, embedding in chunk.fixes]
        handle = None
        if fixes:
            def put_vectors(module, args, output: Tensor) -> Tensor:  # (N, 77, width) token embeddings
                output = output.clone()
                for row, position, embedding in fixes:
                    vectors = embedding.vectors[self.cfg.width][: output.shape[1] - 1 - position]
                    output[row, position : position + vectors.shape[0]] = vectors.to(output)
                return output
            handle = _text_transformer(self.model).embeddings.token_embedding.register_forward_hook(put_vectors)
        try:
            features, pooled_rows = self._run(ids, clip_skip, pooled)
        finally:
            if handle is not None:
                handle.remove()
        if any(chunk.weighted for chunk in chunks):
            features = torch.stack([
                apply_emphasis(f, torch.tensor(chunk.multipliers, device=f.device)) if chunk.weighted else f
                for f, chunk in zip(features, chunks)
            ])
        return features, pooled_rows

    def _run(self, ids: Tensor, clip_skip: int, pooled: bool) -> tuple[Tensor, Tensor | None]:
        self._check_clip_skip(clip_skip)
        if pooled and self.projection is None:
            raise ValueError("this text encoder has no text projection, so no pooled output")
        if ids.ndim != 2 or ids.shape[1] > self.cfg.max_positions:
            raise ValueError(f"ids must be (N, <= {self.cfg.max_positions}), got {tuple(ids.shape)}")
        ids = ids.to(device=self.device, dtype=torch.long)
        layer = self.top_layer - (clip_skip - 1)  # 1-based block whose output we use
        if self.cfg.final_norm and not pooled and layer == self.model.config.num_hidden_layers:
            return self.model(input_ids=ids).last_hidden_state, None  # already final_layer_norm(last block)
        out = self.model(input_ids=ids, output_hidden_states=True)
        features = out.hidden_states[layer]  # [emb, block 1, ...]
        if self.cfg.final_norm:
            features = _text_transformer(self.model).final_layer_norm(features)
        if not pooled:
            return features, None
        first_end = (ids == self.eos_id).int().argmax(dim=-1)  # (N,) position of the first end token
        last = out.last_hidden_state[torch.arange(ids.shape[0], device=ids.device), first_end]  # (N, width)
        return features, self.projection(last)  # type: ignore[misc]

    @torch.inference_mode()
    def encode(self, prompts: Sequence[str], clip_skip: int = 1, min_chunks: int = 1) -> Tensor:
        """Prompts -> (B, 77 * n, width); every prompt padded with empty chunks to n chunks.

        n = max(min_chunks, most chunks of any prompt): pass the other side's chunk count as
        `min_chunks` to give cond and uncond the same length, as A1111 does.
        """
        return self.encode_with_pooled(prompts, clip_skip, min_chunks, pooled=False)[0]

    @torch.inference_mode()
    def encode_with_pooled(
        self, prompts: Sequence[str], clip_skip: int = 1, min_chunks: int = 1, pooled: bool | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Like `encode`, plus (B, projection_dim) pooled outputs of each prompt's FIRST chunk (as A1111)
        when the encoder has a projection (`pooled=None`: whenever it has one); else None."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError(f"prompts must be a non-empty sequence of strings, got {prompts!r}")
        return self.encode_pieces([[WeightedText(p)] for p in prompts], clip_skip, min_chunks, pooled)

    @torch.inference_mode()
    def encode_pieces(
        self, prompts: Sequence[Sequence[Piece]], clip_skip: int = 1, min_chunks: int = 1,
        pooled: bool | None = None, embeddings: EmbeddingIndex | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """`encode_with_pooled` for weighted pieces (emphasis, BREAK) and textual-inversion embeddings."""
        if min_chunks < 1:
            raise ValueError(f"min_chunks must be at least 1, got {min_chunks}")
        pooled = self.projection is not None if pooled is None else pooled
        per_prompt = [self.chunks_of(p, embeddings) for p in prompts]
        n = max(min_chunks, *(len(c) for c in per_prompt))
        empty = self.chunks_of([])[0]
        rows = [row for chunks in per_prompt for row in chunks + [empty] * (n - len(chunks))]
        out, pooled_rows = self._run_chunks(rows, clip_skip, pooled)  # (B*n, 77, W)
        context = out.reshape(len(prompts), n * out.shape[1], out.shape[2])  # (B, n*77, W)
        if pooled_rows is None:
            return context, None
        return context, pooled_rows.reshape(len(prompts), n, -1)[:, 0]  # (B*n, P) -> (B, P) of chunk 0


def text_encoder_from_state_dict(
    cfg: TextEncoderConfig,
    sd: Mapping[str, Tensor],
    dtype: torch.dtype,
    device: torch.device | str,
    tokenizer_folder: Path | None = None,
) -> SDTextEncoder:
    """Build the text encoder from the file's tensors with `cfg.prefix` already removed.

    Raises ValueError (listing up to 5 missing and 5 unexpected keys) when the keys do not fit.
    """
    if cfg.layout == "clip":
        hf_sd = hf_clip_to_transformers(sd)
    elif cfg.layout == "openclip":
        hf_sd = openclip_to_transformers(sd, keep_projection=cfg.projection_dim > 0)
    else:
        raise ValueError(f"unknown text encoder layout {cfg.layout!r}; expected 'clip' or 'openclip'")
    projection = None
    if cfg.projection_dim:  # the pooled output reads the last block: build them all
        weight = hf_sd.pop(PROJECTION_KEY, None)
        if weight is None:
            raise ValueError("the pooled output needs 'text_projection', which is missing")
        if tuple(weight.shape) != (cfg.projection_dim, cfg.width):
            raise ValueError(f"text_projection is {tuple(weight.t().shape)}, expected {(cfg.width, cfg.projection_dim)}")
        with torch.device("meta"):
            projection = torch.nn.Linear(cfg.width, cfg.projection_dim, bias=False)
        projection.load_state_dict({"weight": weight.to(device=device, dtype=dtype)}, assign=True)
        projection.eval().requires_grad_(False)
        num_layers = cfg.layers
    else:  # blocks after the one clip skip 1 reads are never used: do not build them
        num_layers = cfg.layers - (1 if cfg.default_layer == "penultimate" else 0)
    model = build_clip_text_model(cfg, hf_sd, dtype, device, num_layers=num_layers)
    return SDTextEncoder(cfg, model, load_clip_tokenizer(tokenizer_folder), projection)


def text_encoder_config_from_shapes(
    layout: Literal["clip", "openclip"], prefix: str, shapes: Mapping[str, tuple[int, ...]], sdxl: bool = False
) -> TextEncoderConfig:
    """Infer a TextEncoderConfig from tensor shapes; keys include `prefix`.

    `sdxl`: SDXL's use of the encoder: penultimate layer without the final layer norm, and for
    OpenCLIP (bigG) the pooled output through `text_projection`.
    """
    if layout == "clip":
        # Most SD 1 files have `text_model.`; some old ones lack that level (A1111 renames them).
        base = prefix + "text_model." if f"{prefix}text_model.embeddings.token_embedding.weight" in shapes else prefix
        token, position = base + "embeddings.token_embedding.weight", base + "embeddings.position_embedding.weight"
        block = re.compile(re.escape(base + "encoder.layers.") + r"(\d+)\.")
        mlp = base + "encoder.layers.0.mlp.fc1.weight"
    elif layout == "openclip":
        token, position = prefix + "token_embedding.weight", prefix + "positional_embedding"
        block = re.compile(re.escape(prefix + "transformer.resblocks.") + r"(\d+)\.")
        mlp = prefix + "transformer.resblocks.0.mlp.c_fc.weight"
    else:
        raise ValueError(f"unknown text encoder layout {layout!r}; expected 'clip' or 'openclip'")
    absent = [k for k in (token, position, mlp) if k not in shapes]
    if absent:
        raise ValueError(f"text encoder key(s) not found: {', '.join(absent)}")
    vocab_size, width = shapes[token]
    layers = len({m[1] for k in shapes if (m := block.match(k))})
    common = dict(
        layout=layout, prefix=prefix, width=width, layers=layers, heads=max(1, width // 64),
        mlp_width=shapes[mlp][0], vocab_size=vocab_size, max_positions=shapes[position][0],
    )
    if sdxl:
        projection = shapes.get(prefix + "text_projection") if layout == "openclip" else None
        if layout == "openclip" and projection is None:
            raise ValueError(f"text encoder key not found: {prefix}text_projection")
        common.update(default_layer="penultimate", final_norm=False, projection_dim=projection[1] if projection else 0)
    if layout == "clip":
        # The end token pads; it is the last id of a CLIP-format vocabulary (49407).
        return TextEncoderConfig(**{"default_layer": "last", **common}, activation="quick_gelu", pad_token_id=vocab_size - 1)
    return TextEncoderConfig(**{"default_layer": "penultimate", **common}, activation="gelu", pad_token_id=0)
