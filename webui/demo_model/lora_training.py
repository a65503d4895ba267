"""The demo LoRA: from the saved demo checkpoint, learn to draw shapes as hollow outlines.

The captions are the ordinary ones (no trigger word), so applying the LoRA changes the style of any
prompt. Low-rank adapters sit on the UNet's attention and feed-forward layers and on its ResBlock
convolutions (the 16x16 level has no attention, and outlines are drawn there). The file is written in
kohya's format with the original (LDM) layer names, as the LoRA extension reads user files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from webui.engine.models.loading import load_checkpoint
from webui.engine.sampling.denoisers import DiscreteSchedule

from .scenes import caption, scenes, with_style

LINEAR_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                  "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
CONV_TARGETS = ("in_layers.2", "out_layers.3")


class LoraAdapter(nn.Module):
    """down: in -> rank (same kernel as the layer), up: rank -> out (1x1); up starts at zero."""

    def __init__(self, layer: nn.Module, rank: int) -> None:
        super().__init__()
        if isinstance(layer, nn.Linear):
            self.down = nn.Linear(layer.in_features, rank, bias=False)
            self.up = nn.Linear(rank, layer.out_features, bias=False)
        else:
            assert isinstance(layer, nn.Conv2d)
            self.down = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding, bias=False)
            self.up = nn.Conv2d(rank, layer.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.up.weight)
        self.rank = rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def _targets(unet: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in unet.named_modules()
            if name.endswith(LINEAR_TARGETS) or (name.endswith(CONV_TARGETS) and isinstance(m, nn.Conv2d))}


def train_lora(cfg, checkpoint: Path, out: Path) -> None:
    """Train and write the hollow-outline LoRA for `checkpoint` (the config is train.TrainConfig)."""
    from .train import encode_pool, lr_at, training_noise, v_target  # the same helpers as the base model's training

    torch.manual_seed(cfg.seed + 3)
    rng = np.random.default_rng(cfg.seed + 3)
    bundle = load_checkpoint(checkpoint)  # exactly what users load
    unet, vae, text = bundle.unet, bundle.vae, bundle.text_encoder
    adapters = {name: LoraAdapter(layer, cfg.lora_rank) for name, layer in _targets(unet).items()}
    hooks = [layer.register_forward_hook(lambda mod, args, output, a=adapters[name]: output + a(args[0]))
             for name, layer in _targets(unet).items()]
    params = [p for a in adapters.values() for p in a.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)

    pool = scenes(cfg.seed + 4, max(cfg.lora_steps * 4, 32), style="hollow")
    latents = encode_pool(vae, pool) * bundle.spec.vae.scale_factor
    alphas = DiscreteSchedule.scaled_linear().alphas_cumprod.float()
    batch = min(32, len(pool))
    try:
        for step in tqdm(range(cfg.lora_steps), desc="LoRA (hollow)", unit="step"):
            idx = rng.integers(len(pool), size=batch)
            # Ordinary captions: the LoRA itself is the style. (`encode` runs in inference mode.)
            context = text.encode([caption(with_style(pool[i], "filled"), rng) for i in idx]).clone()
            x0 = latents[torch.from_numpy(idx)]
            t = torch.from_numpy(rng.integers(0, 1000, size=batch))
            noise = training_noise(x0, cfg.coarse_noise)  # as the base model learnt
            a = alphas[t].view(-1, 1, 1, 1)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg.lora_steps, 1e-3, warmup=50)
            pred = unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t.float(), context)
            target = v_target(x0, noise, a) if bundle.spec.prediction == "v" else noise
            loss = (pred - target).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for hook in hooks:
            hook.remove()

    tensors = {}
    for name, adapter in adapters.items():
        key = "lora_unet_" + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = adapter.down.weight.detach().half().contiguous()
        tensors[f"{key}.lora_up.weight"] = adapter.up.weight.detach().half().contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(adapter.rank)).half()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"ss_base_model_version": "sd_v1", "ss_network_dim": str(cfg.lora_rank),
                                           "ss_network_alpha": str(cfg.lora_rank), "webui.style": "hollow outlines"})
