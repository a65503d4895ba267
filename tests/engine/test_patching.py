"""Weight patches: applied as W + strength * delta, restored bit for bit, validated before any change."""

import pytest
import torch
from torch import nn

from webui.engine.patching import PatchError, WeightPatch, model_roots, patched, resolve_parameter
from webui.errors import WebUIError


def toy(dtype=torch.float32, inference=False):
    with torch.inference_mode(inference):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Conv2d(6, 3, 3)).to(dtype).requires_grad_(False)
    return {"net": net, "other": nn.Linear(2, 2).requires_grad_(False)}


def snapshot(roots):
    return {f"{r}.{k}": (v.clone(), v.data_ptr()) for r, m in roots.items() for k, v in m.state_dict().items()}


def assert_restored(roots, before):
    after = snapshot(roots)
    assert after.keys() == before.keys()
    for key, (value, ptr) in before.items():
        assert torch.equal(after[key][0], value), key
        assert after[key][1] == ptr, f"{key} is not the original tensor"


def const(shape, value):
    return lambda: torch.full(shape, value)


def test_applies_strength_times_delta_and_restores():
    roots = toy()
    before = snapshot(roots)
    delta = torch.randn(6, 4)
    with patched(roots, [WeightPatch("net.0.weight", lambda: delta, 0.5, "test")]):
        assert torch.allclose(roots["net"][0].weight, before["net.0.weight"][0] + 0.5 * delta)
        assert torch.equal(roots["net"][0].bias, before["net.0.bias"][0])
    assert_restored(roots, before)


def test_patches_on_one_target_sum_and_others_apply_independently():
    roots = toy()
    w0, c0 = roots["net"][0].weight.clone(), roots["net"][2].weight.clone()
    patches = [
        WeightPatch("net.0.weight", const((6, 4), 1.0), 1.0),
        WeightPatch("net.0.weight", const((6, 4), 2.0), -0.25),
        WeightPatch("net.2.weight", const((3, 6, 3, 3), 1.0), 2.0),
    ]
    with patched(roots, patches):
        assert torch.allclose(roots["net"][0].weight, w0 + 0.5)
        assert torch.allclose(roots["net"][2].weight, c0 + 2.0)


def test_strength_zero_is_a_no_op_and_never_computes_the_delta():
    roots = toy()
    before = snapshot(roots)

    def never():
        raise AssertionError("delta of a strength-0 patch was computed")

    with patched(roots, [WeightPatch("net.0.weight", never, 0.0)]):
        assert_restored(roots, before)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_weights_are_summed_in_float32_and_restored_exactly(dtype):
    roots = toy(dtype)
    before = snapshot(roots)
    w = roots["net"][0].weight
    deltas = [torch.randn(6, 4) * 1e-3 for _ in range(3)]
    expected = w.float()
    for d in deltas:
        expected = expected + d
    expected = expected.to(dtype)  # summed in float32, rounded once
    with patched(roots, [WeightPatch("net.0.weight", (lambda d=d: d)) for d in deltas]):
        assert roots["net"][0].weight.dtype == dtype
        assert torch.equal(roots["net"][0].weight, expected)
    assert_restored(roots, before)


def test_restores_after_an_exception_inside_the_block():
    roots = toy()
    before = snapshot(roots)
    with pytest.raises(ValueError, match="boom"):
        with patched(roots, [WeightPatch("net.0.weight", const((6, 4), 1.0)), WeightPatch("net.2.bias", const((3,), 1.0))]):
            assert not torch.equal(roots["net"][0].weight, before["net.0.weight"][0])
            raise ValueError("boom")
    assert_restored(roots, before)


@pytest.mark.parametrize("target, words", [
    ("net.5.weight", ["lora:x", "net.5.weight", "no layer"]),
    ("net.0.scale", ["lora:x", "net.0.scale", "no parameter 'scale'"]),
    ("vae.decoder.weight", ["lora:x", "vae.decoder.weight", "no model part 'vae'"]),
])
def test_missing_target_fails_before_anything_changes(target, words):
    roots = toy()
    before = snapshot(roots)
    called = []
    good = WeightPatch("net.0.weight", lambda: called.append(1) or torch.ones(6, 4), 1.0, "lora:ok")
    with pytest.raises(PatchError) as info:
        with patched(roots, [good, WeightPatch(target, const((1,), 1.0), 1.0, "lora:x")]):
            pytest.fail("the block must not run")
    assert isinstance(info.value, WebUIError)
    for word in words:
        assert word in str(info.value)
    assert not called, "a delta was computed although a target was missing"
    assert_restored(roots, before)


def test_shape_mismatch_names_source_and_target_and_leaves_every_weight_as_it_was():
    roots = toy()
    before = snapshot(roots)
    patches = [
        WeightPatch("net.0.weight", const((6, 4), 1.0), 1.0, "lora:good"),
        WeightPatch("net.2.weight", const((3, 6), 1.0), 1.0, "lora:bad"),
    ]
    with pytest.raises(PatchError, match=r"lora:bad.*net\.2\.weight.*\(3, 6\).*\(3, 6, 3, 3\)"):
        with patched(roots, patches):
            pytest.fail("the block must not run")
    assert_restored(roots, before)


@pytest.mark.parametrize("outer_inference", [False, True])
@pytest.mark.parametrize("made_in_inference", [False, True])
def test_works_inside_and_outside_inference_mode(outer_inference, made_in_inference):
    roots = toy(inference=made_in_inference)
    before = snapshot(roots)
    x = torch.randn(2, 4)
    with torch.inference_mode(outer_inference):
        plain = roots["net"][0](x)
        with patched(roots, [WeightPatch("net.0.weight", const((6, 4), 0.1))]):
            changed = roots["net"][0](x)
        again = roots["net"][0](x)
    assert torch.allclose(changed, plain + 0.1 * x.sum(-1, keepdim=True))
    assert torch.equal(again, plain)
    assert_restored(roots, before)


def test_nested_contexts_restore_in_order():
    roots = toy()
    w0 = roots["net"][0].weight.clone()
    with patched(roots, [WeightPatch("net.0.weight", const((6, 4), 1.0))]):
        with patched(roots, [WeightPatch("net.0.weight", const((6, 4), 2.0))]):
            assert torch.allclose(roots["net"][0].weight, w0 + 3.0)
        assert torch.allclose(roots["net"][0].weight, w0 + 1.0)
    assert torch.equal(roots["net"][0].weight, w0)


def test_resolve_parameter_and_model_roots():
    roots = toy()
    assert resolve_parameter(roots, "net.2.bias") is roots["net"][2].bias
    assert resolve_parameter(roots, "other.weight") is roots["other"].weight

    class Bundle:
        unet, text_encoder, vae = nn.Linear(1, 1), nn.Linear(1, 1), nn.Linear(1, 1)

    assert model_roots(Bundle) == {"unet": Bundle.unet, "text_encoder": Bundle.text_encoder}
