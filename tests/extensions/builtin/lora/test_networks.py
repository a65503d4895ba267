"""LoRA-family files on tiny models in the real layouts: each formula, computed here independently,
equals what patching applies; everything else stays bit-identical, and restoring is exact."""

import pytest
import torch
from safetensors.torch import save_file

from extensions.builtin.lora.networks import LoraResult, lora_patches, read_lora_file
from webui.engine.patching import model_roots, patched
from webui.errors import ModelLoadError

from .conftest import all_params

gen = torch.Generator().manual_seed(1234)


def rand(*shape):
    return torch.randn(*shape, generator=gen) * 0.1


def clip(bundle_te_model, name):
    """Our path of a CLIP layer (transformers has a `text_model.` level before 5.6, none after)."""
    return ("text_model." if hasattr(bundle_te_model, "text_model") else "") + name


def lora(prefix, out, inp, rank, alpha=None, kernel=None, names=("lora_down.weight", "lora_up.weight")):
    """A kohya-style pair (down (rank, in[, k, k]), up (out, rank[, 1, 1])) and its delta, computed by einsum."""
    down = rand(rank, inp, *(kernel or ()))
    up = rand(out, rank, *((1, 1) if kernel else ()))
    sd = {f"{prefix}.{names[0]}": down, f"{prefix}.{names[1]}": up}
    if alpha is not None:
        sd[f"{prefix}.alpha"] = torch.tensor(float(alpha))
    scale = (alpha if alpha is not None else rank) / rank
    delta = torch.einsum("or,ri...->oi...", up.flatten(1), down) * scale
    return sd, delta


def check(bundle, sd, expected, unet_strength=1.0, te_strength=1.0, name="test", matched=None):
    """Apply `sd`; parameters in `expected` must be W + strength * delta, all others unchanged; then restored."""
    before = all_params(bundle)
    result = lora_patches(sd, bundle, unet_strength, te_strength, name)
    assert isinstance(result, LoraResult)
    assert not result.unmatched and not result.warnings, (result.unmatched, result.warnings)
    assert result.matched == (len(expected) if matched is None else matched)
    with patched(model_roots(bundle), result.patches):
        now = all_params(bundle)
        for target, value in now.items():
            if target in expected:
                strength = unet_strength if target.startswith("unet.") else te_strength
                want = before[target] + strength * expected[target]
                assert torch.allclose(value, want, rtol=1e-5, atol=1e-6), target
                assert not torch.equal(value, before[target]), target
            else:
                assert torch.equal(value, before[target]), f"{target} changed"
    after = all_params(bundle)
    assert all(torch.equal(after[k], before[k]) for k in before)
    return result


def test_kohya_lora_unet_attention_conv_projection_and_text_encoder(sd1):
    te = sd1.text_encoder.model
    q, dq = lora("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 32, 32, 4, alpha=2)
    k, dk = lora("lora_unet_down_blocks_1_attentions_1_transformer_blocks_0_attn2_to_k", 64, 64, 8)  # no alpha
    # SD 1 projections are 1x1 convs; kohya stores their factors as 1x1 convs too.
    p, dp = lora("lora_unet_up_blocks_1_attentions_2_proj_out", 64, 64, 4, alpha=1, kernel=(1, 1))
    ff, dff = lora("lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2", 64, 256, 4, alpha=4)
    t, dt = lora("lora_te_text_model_encoder_layers_1_self_attn_q_proj", 64, 64, 4, alpha=3)
    expected = {
        "unet.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": dq,
        "unet.input_blocks.5.1.transformer_blocks.0.attn2.to_k.weight": dk,
        "unet.output_blocks.5.1.proj_out.weight": dp,
        "unet.middle_block.1.transformer_blocks.0.ff.net.2.weight": dff,
        "text_encoder.model." + clip(te, "encoder.layers.1.self_attn.q_proj.weight"): dt,
    }
    result = check(sd1, {**q, **k, **p, **ff, **t}, expected, unet_strength=0.7, te_strength=-0.4)
    assert {p.source for p in result.patches} == {"lora:test"}


def test_locon_convs_with_and_without_tucker_core(sd1):
    conv, dconv = lora("lora_unet_down_blocks_0_resnets_1_conv1", 32, 32, 4, alpha=2, kernel=(3, 3))
    down_op, ddown = lora("lora_unet_down_blocks_1_downsamplers_0_conv", 64, 64, 2, kernel=(3, 3))
    up_conv, dup = lora("lora_unet_up_blocks_0_upsamplers_0_conv", 64, 64, 2, alpha=1, kernel=(3, 3))
    skip, dskip = lora("lora_unet_up_blocks_1_resnets_0_conv_shortcut", 64, 128, 2, kernel=(1, 1))
    emb, demb = lora("lora_unet_up_blocks_2_resnets_2_time_emb_proj", 32, 128, 2)
    # Tucker (`lora_mid`): 1x1 down, a (rank, rank, 3, 3) core, 1x1 up.
    key = "lora_unet_up_blocks_2_resnets_1_conv2"
    d, m, u = rand(4, 32, 1, 1), rand(4, 4, 3, 3), rand(32, 4, 1, 1)
    tucker = {f"{key}.lora_down.weight": d, f"{key}.lora_mid.weight": m, f"{key}.lora_up.weight": u,
              f"{key}.alpha": torch.tensor(2.0)}
    dtucker = torch.einsum("or,rskl,si->oikl", u[:, :, 0, 0], m, d[:, :, 0, 0]) * 2 / 4
    expected = {
        "unet.input_blocks.2.0.in_layers.2.weight": dconv,
        "unet.input_blocks.6.0.op.weight": ddown,
        "unet.output_blocks.2.1.conv.weight": dup,  # level without attention: the upsampler is second
        "unet.output_blocks.3.0.skip_connection.weight": dskip,
        "unet.output_blocks.8.0.emb_layers.1.weight": demb,
        "unet.output_blocks.7.0.out_layers.3.weight": dtucker,
    }
    check(sd1, {**conv, **down_op, **up_conv, **skip, **emb, **tucker}, expected)


def test_loha_linear_conv_and_tucker(sd1):
    def hada(key, out, inp, rank, alpha):
        w = {n: rand(*s) for n, s in [("hada_w1_a", (out, rank)), ("hada_w1_b", (rank, inp)),
                                       ("hada_w2_a", (out, rank)), ("hada_w2_b", (rank, inp))]}
        delta = (w["hada_w1_a"] @ w["hada_w1_b"]) * (w["hada_w2_a"] @ w["hada_w2_b"]) * alpha / rank
        return {f"{key}.{n}": v for n, v in w.items()} | {f"{key}.alpha": torch.tensor(float(alpha))}, delta

    lin, dlin = hada("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_v", 64, 64, 4, 2)
    # A conv LoHa without Tucker keeps the kernel flattened into w_b: (rank, in * 3 * 3).
    conv, dconv = hada("lora_unet_down_blocks_0_resnets_0_conv2", 32, 32 * 9, 4, 1)
    key, rank = "lora_unet_up_blocks_1_resnets_1_conv1", 2
    t = {n: rand(*s) for n, s in [("hada_t1", (rank, rank, 3, 3)), ("hada_w1_a", (rank, 64)), ("hada_w1_b", (rank, 128)),
                                   ("hada_t2", (rank, rank, 3, 3)), ("hada_w2_a", (rank, 64)), ("hada_w2_b", (rank, 128))]}

    def rebuild(core, a, b):  # (k, l, out, in) by matrix products, then to (out, in, k, l)
        return (a.T @ core.permute(2, 3, 0, 1) @ b).permute(2, 3, 0, 1)

    dt = rebuild(t["hada_t1"], t["hada_w1_a"], t["hada_w1_b"]) * rebuild(t["hada_t2"], t["hada_w2_a"], t["hada_w2_b"])
    expected = {
        "unet.input_blocks.4.1.transformer_blocks.0.attn1.to_v.weight": dlin,
        "unet.input_blocks.1.0.out_layers.3.weight": dconv.reshape(32, 32, 3, 3),
        "unet.output_blocks.4.0.in_layers.2.weight": dt,  # no alpha: scale 1
    }
    check(sd1, {**lin, **conv, **{f"{key}.{n}": v for n, v in t.items()}}, expected)


def kron_blocks(w1, w2):
    """Kronecker product written out block by block: block (a, b) is w1[a, b] * w2."""
    o2, i2 = w2.shape[:2]
    out = torch.zeros(w1.shape[0] * o2, w1.shape[1] * i2, *w2.shape[2:])
    for a in range(w1.shape[0]):
        for b in range(w1.shape[1]):
            out[a * o2:(a + 1) * o2, b * i2:(b + 1) * i2] = w1[a, b] * w2
    return out


def test_lokr_whole_and_decomposed_factors(sd1):
    # w1 whole, w2 decomposed: scaled by alpha / rank.
    k1 = "lora_unet_down_blocks_0_attentions_1_transformer_blocks_0_attn2_to_q"
    w1, w2a, w2b = rand(4, 2), rand(8, 3), rand(3, 16)
    dec = {f"{k1}.lokr_w1": w1, f"{k1}.lokr_w2_a": w2a, f"{k1}.lokr_w2_b": w2b, f"{k1}.alpha": torch.tensor(6.0)}
    # Both whole: LyCORIS ignores alpha (scale 1).
    k2 = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    v1, v2 = rand(8, 4), rand(32, 16)
    whole = {f"{k2}.lokr_w1": v1, f"{k2}.lokr_w2": v2, f"{k2}.alpha": torch.tensor(100.0)}
    # A conv: w2 holds the kernel, w1 scales whole kernels.
    k3 = "lora_unet_down_blocks_1_resnets_1_conv1"
    c1, c2 = rand(2, 4), rand(32, 16, 3, 3)
    conv = {f"{k3}.lokr_w1": c1, f"{k3}.lokr_w2": c2}
    # w1 decomposed, w2 whole.
    k4 = "lora_unet_mid_block_resnets_0_time_emb_proj"
    a1, b1, u2 = rand(4, 2), rand(2, 8), rand(16, 16)
    dec1 = {f"{k4}.lokr_w1_a": a1, f"{k4}.lokr_w1_b": b1, f"{k4}.lokr_w2": u2, f"{k4}.alpha": torch.tensor(1.0)}
    te = sd1.text_encoder.model
    expected = {
        "unet.input_blocks.2.1.transformer_blocks.0.attn2.to_q.weight": kron_blocks(w1, w2a @ w2b) * 6 / 3,
        "text_encoder.model." + clip(te, "encoder.layers.0.mlp.fc1.weight"): kron_blocks(v1, v2),
        "unet.input_blocks.5.0.in_layers.2.weight": kron_blocks(c1, c2),
        "unet.middle_block.0.emb_layers.1.weight": kron_blocks(a1 @ b1, u2) * 1 / 2,
    }
    check(sd1, {**dec, **whole, **conv, **dec1}, expected)


def test_full_diff_weight_and_bias(sd1):
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"
    only_bias = "lora_unet_down_blocks_0_attentions_0_proj_out"
    diff, diff_b, bias_only = rand(32, 32), rand(32), rand(32)
    sd = {f"{key}.diff": diff, f"{key}.diff_b": diff_b, f"{only_bias}.diff_b": bias_only}
    layer = "unet.input_blocks.1.1.transformer_blocks.0.attn1.to_out.0"
    check(sd1, sd, {f"{layer}.weight": diff, f"{layer}.bias": diff_b, "unet.input_blocks.1.1.proj_out.bias": bias_only},
          matched=2)


def test_kohya_lora_in_original_ldm_names_and_diffusers_peft_names(sd1):
    te = sd1.text_encoder.model
    ldm, dldm = lora("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_v", 64, 64, 4, alpha=1)
    ldm_conv, dconv = lora("lora_unet_output_blocks_8_0_in_layers_2", 32, 64, 2, kernel=(3, 3))
    peft, dpeft = lora("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0", 64, 64, 4,
                       names=("lora_A.weight", "lora_B.weight"))
    peft_te, dpeft_te = lora("text_encoder.text_model.encoder.layers.2.mlp.fc1", 256, 64, 4, alpha=8,
                             names=("lora_A.weight", "lora_B.weight"))
    old, dold = lora("unet.up_blocks.2.attentions.1.transformer_blocks.0.ff.net.0.proj", 256, 32, 2,
                     names=("lora.down.weight", "lora.up.weight"))
    linear_layer, dll = lora("unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_q", 64, 64, 2,
                             names=("lora_linear_layer.down.weight", "lora_linear_layer.up.weight"))
    processor, dproc = lora("unet.down_blocks.0.attentions.1.transformer_blocks.0.attn1.processor", 32, 32, 2,
                            names=("to_out_lora.down.weight", "to_out_lora.up.weight"))
    expected = {
        "unet.input_blocks.4.1.transformer_blocks.0.attn2.to_v.weight": dldm,
        "unet.output_blocks.8.0.in_layers.2.weight": dconv,
        "unet.input_blocks.4.1.transformer_blocks.0.attn1.to_out.0.weight": dpeft,
        "text_encoder.model." + clip(te, "encoder.layers.2.mlp.fc1.weight"): dpeft_te,
        "unet.output_blocks.7.1.transformer_blocks.0.ff.net.0.proj.weight": dold,
        "unet.middle_block.1.transformer_blocks.0.attn2.to_q.weight": dll,
        "unet.input_blocks.2.1.transformer_blocks.0.attn1.to_out.0.weight": dproc,
    }
    check(sd1, {**ldm, **ldm_conv, **peft, **peft_te, **old, **linear_layer, **processor}, expected)


def test_sd2_linear_projections_and_unbuilt_last_text_block(sd2):
    te = sd2.text_encoder.model
    # SD 2 projections are Linear; a LoRA with 1x1-conv factors still fits them.
    proj, dproj = lora("lora_unet_down_blocks_1_attentions_0_proj_in", 128, 128, 4, kernel=(1, 1))
    attn, dattn = lora("lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn2_to_k", 128, 64, 4, alpha=2)
    te_ok, dte = lora("lora_te_text_model_encoder_layers_1_self_attn_v_proj", 64, 64, 2)
    unused, _ = lora("lora_te_text_model_encoder_layers_2_self_attn_v_proj", 64, 64, 2)  # never built
    expected = {
        "unet.input_blocks.3.1.proj_in.weight": dproj.reshape(128, 128),
        "unet.input_blocks.3.1.transformer_blocks.1.attn2.to_k.weight": dattn,
        "text_encoder.model." + clip(te, "encoder.layers.1.self_attn.v_proj.weight"): dte,
    }
    check(sd2, {**proj, **attn, **te_ok, **unused}, expected)


def test_sdxl_kohya_and_diffusers_names_for_both_text_encoders(sdxl):
    clip_l, bigg = (e.model for e in sdxl.text_encoder.encoders)
    unet, dunet = lora("lora_unet_input_blocks_7_1_transformer_blocks_1_attn2_to_k", 128, 192, 4, alpha=2)
    up, dup = lora("lora_unet_output_blocks_2_2_conv", 128, 128, 2, kernel=(3, 3))  # attention level: third
    diff_unet, ddiff = lora("unet.up_blocks.0.attentions.1.transformer_blocks.1.attn1.to_q", 128, 128, 4,
                            names=("lora_A.weight", "lora_B.weight"))
    te1, dte1 = lora("lora_te1_text_model_encoder_layers_0_self_attn_k_proj", 64, 64, 4, alpha=1)
    te2, dte2 = lora("lora_te2_text_model_encoder_layers_2_mlp_fc2", 128, 512, 4)
    te2_peft, dte2p = lora("text_encoder_2.text_model.encoder.layers.1.self_attn.out_proj", 128, 128, 2,
                           names=("lora_A.weight", "lora_B.weight"))
    te1_last, _ = lora("lora_te1_text_model_encoder_layers_2_mlp_fc2", 64, 256, 2)  # SDXL never builds it
    expected = {
        "unet.input_blocks.7.1.transformer_blocks.1.attn2.to_k.weight": dunet,
        "unet.output_blocks.2.2.conv.weight": dup,
        "unet.output_blocks.1.1.transformer_blocks.1.attn1.to_q.weight": ddiff,
        "text_encoder.encoders.0.model." + clip(clip_l, "encoder.layers.0.self_attn.k_proj.weight"): dte1,
        "text_encoder.encoders.1.model." + clip(bigg, "encoder.layers.2.mlp.fc2.weight"): dte2,
        "text_encoder.encoders.1.model." + clip(bigg, "encoder.layers.1.self_attn.out_proj.weight"): dte2p,
    }
    check(sdxl, {**unet, **up, **diff_unet, **te1, **te2, **te2_peft, **te1_last}, expected, 0.5, 1.5)


def test_several_loras_sum_and_strength_zero_is_a_no_op(sd1):
    target = "unet.input_blocks.1.1.transformer_blocks.0.attn2.to_q.weight"
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_q"
    (a, da), (b, db) = lora(key, 32, 32, 4, alpha=1), lora(key, 32, 32, 2, alpha=2)
    before = all_params(sd1)
    pa = lora_patches(a, sd1, 0.6, 1.0, "a").patches
    pb = lora_patches(b, sd1, -1.2, 1.0, "b").patches
    with patched(model_roots(sd1), pa + pb):
        assert torch.allclose(all_params(sd1)[target], before[target] + 0.6 * da - 1.2 * db, atol=1e-6)

    zero = lora_patches(a, sd1, 0.0, 0.0, "zero")
    assert zero.matched == 1 and zero.patches == []
    with patched(model_roots(sd1), zero.patches):
        now = all_params(sd1)
        assert all(torch.equal(now[k], v) for k, v in before.items())


def sdxl_style_lora(sdxl):
    """A LoRA on every attention projection of the SDXL model and both its text encoders, in kohya's names."""
    sd = {}
    for name, module in sdxl.unet.named_modules():
        if name.endswith(("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out")):
            out, inp = module.weight.shape[:2]
            sd.update(lora("lora_unet_" + name.replace(".", "_"), out, inp, 4, alpha=2)[0])
    for part, encoder in zip(("te1", "te2"), sdxl.text_encoder.encoders):
        width = encoder.cfg.width
        for layer in range(encoder.cfg.layers):
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                sd.update(lora(f"lora_{part}_text_model_encoder_layers_{layer}_self_attn_{proj}", width, width, 4)[0])
    return sd


def test_a_lora_for_another_base_model_is_skipped_as_a_whole_with_a_warning(sd1, sdxl):
    result = lora_patches(sdxl_style_lora(sdxl), sd1, 1.0, 1.0, "xl_style")
    assert result.patches == []
    assert len(result.warnings) == 1
    assert "'xl_style'" in result.warnings[0] and "SD 1.x" in result.warnings[0] and "SDXL" in result.warnings[0]
    assert "skipped" in result.warnings[0]
    assert len(result.unmatched) > result.matched


def test_layers_of_another_shape_are_left_out_with_a_warning(sd1):
    good, dgood = lora("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k", 32, 32, 4)
    also, dalso = lora("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v", 32, 32, 4)
    bad, _ = lora("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 32, 768, 4)
    result = lora_patches({**good, **also, **bad}, sd1, 1.0, 1.0, "partial")
    assert result.matched == 2 and len(result.patches) == 2
    assert result.unmatched == ["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"]
    assert len(result.warnings) == 1 and "'partial'" in result.warnings[0] and "attn2_to_k" in result.warnings[0]


def test_unknown_files_and_kinds_are_reported(sd1):
    assert "no layers" in lora_patches({"foo.bar": torch.ones(1)}, sd1, 1, 1, "junk").warnings[0]
    oft = {"lora_unet_down_blocks_0_attentions_0_proj_in.oft_blocks": torch.ones(4, 8, 8)}
    result = lora_patches(oft, sd1, 1, 1, "oft")
    assert result.patches == [] and "cannot apply" in result.warnings[0]


def test_inpainting_first_conv_takes_a_base_model_lora(bundles):
    model = bundles("sd1_inpaint")
    conv, dconv = lora("lora_unet_conv_in", 32, 4, 2, kernel=(3, 3))
    padded = torch.cat([dconv, torch.zeros(32, 5, 3, 3)], dim=1)  # the mask/image channels are left alone
    check(model, conv, {"unet.input_blocks.0.0.weight": padded})


def test_unet_output_changes_under_the_patch_and_is_identical_after(sd1):
    sd = {}
    for name, module in sd1.unet.named_modules():
        if name.endswith(("attn1.to_q", "attn2.to_v", "ff.net.2")):
            sd.update(lora("lora_unet_" + name.replace(".", "_"), module.weight.shape[0], module.weight.shape[1], 4)[0])
    result = lora_patches(sd, sd1, 1.0, 1.0, "forward")
    assert result.matched == len(sd) // 2 and not result.warnings
    x, t = torch.randn(1, 4, 16, 16, generator=gen), torch.tensor([500.0])
    context = torch.randn(1, 4, 64, generator=gen)
    with torch.inference_mode():
        plain = sd1.unet(x, t, context)
        with patched(model_roots(sd1), result.patches):
            changed = sd1.unet(x, t, context)
        again = sd1.unet(x, t, context)
    assert (changed - plain).abs().max() > 1e-3
    assert torch.equal(again, plain)


def test_text_encoder_output_changes_under_the_patch(sd1):
    key = "lora_te_text_model_encoder_layers_0_mlp_fc2"
    result = lora_patches(lora(key, 64, 256, 4)[0], sd1, 1.0, 2.0, "te")
    plain = sd1.text_encoder.encode(["a red circle"])
    with patched(model_roots(sd1), result.patches):
        changed = sd1.text_encoder.encode(["a red circle"])
    assert (changed - plain).abs().max() > 1e-4
    assert torch.equal(sd1.text_encoder.encode(["a red circle"]), plain)


def test_read_lora_file_safetensors_and_pickle_without_code(tmp_path, sd1):
    sd, _ = lora("lora_unet_down_blocks_0_attentions_0_proj_in", 32, 32, 4, alpha=2, kernel=(1, 1))
    save_file(sd, str(tmp_path / "a.safetensors"))
    torch.save({"state_dict": sd}, tmp_path / "b.pt")
    for path in (tmp_path / "a.safetensors", tmp_path / "b.pt"):
        loaded = read_lora_file(path)
        assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)
    torch.save({"evil": Evil()}, tmp_path / "c.ckpt")
    with pytest.raises(ModelLoadError, match="c.ckpt"):
        read_lora_file(tmp_path / "c.ckpt")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="expected .safetensors"):
        read_lora_file(tmp_path / "d.txt")
    (tmp_path / "e.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="e.safetensors"):
        read_lora_file(tmp_path / "e.safetensors")


class Evil:
    """Pickled code, which weights_only loading must refuse to run."""

    def __reduce__(self):
        return (print, ("this must not run",))
