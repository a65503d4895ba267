"""What the committed demo ControlNet does, judged from pixels: the shape appears where the control image
puts it, whatever the seed, while the prompt still sets the colours.

The control images are rendered scenes, turned into edge maps by the extension's own canny
preprocessor; the prompts leave the position out (it is the control image's to say).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from webui.demo_model.scenes import caption, render, scenes
from webui.demo_model.scoring import judge
from webui.demo_model.controlnet_training import without_position
from webui.engine.models.loading import load_checkpoint
from webui.engine.pipelines import PipelineContext, generate
from webui.engine.request import GenerationRequest
from webui.presets import load_preset

from ..extensions.helpers import load_builtin_extensions

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
CONTROLNET = MODELS / "controlnet" / "webui-demo-canny.safetensors"
DEMO = load_preset(ROOT / "presets" / "demo.yaml")
# Scenes of every position; the prompt's seed is offset so the start noise is not the one the scene came from.
EVAL = [s for s in scenes(4242, 200) if s.size != "small"][:27]


@pytest.fixture(scope="module")
def demo():
    return load_checkpoint(MODELS / "checkpoints" / "webui-demo.safetensors")


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    assert CONTROLNET.is_file(), "the demo ControlNet is missing: python -m webui.demo_model.train --stages controlnet"
    return load_builtin_extensions(MODELS, tmp_path_factory.mktemp("cn-data"))


def run(demo, manager, scene, seed, controlled=True, **unit):
    extensions = {}
    if controlled:
        extensions = {"controlnet": {"units": [{"model": CONTROLNET.name, "module": "canny",
                                                "image": Image.fromarray(render(scene)), **unit}]}}
    request = GenerationRequest(**{**DEMO, "prompt": without_position(caption(scene)), "seed": 1000 + seed,
                                   "extensions": extensions})
    return generate(request, PipelineContext(demo, hooks=manager.hooks_for_job())).images[0]


@pytest.fixture(scope="module")
def judged(demo, manager):
    return {controlled: [judge(run(demo, manager, s, i, controlled)) for i, s in enumerate(EVAL)]
            for controlled in (True, False)}


def share(judgements, scenes_, what):
    return float(np.mean([getattr(j, what) == getattr(s, "colour" if what == "colour" else what)
                          for j, s in zip(judgements, scenes_)]))


def test_the_shape_appears_where_the_control_image_puts_it(judged):
    guided, plain = share(judged[True], EVAL, "position"), share(judged[False], EVAL, "position")
    print(f"\npositions right: {guided:.0%} with the demo ControlNet, {plain:.0%} without (prompts name none)")
    assert guided >= 0.8
    assert guided - plain >= 0.4  # the control image, not chance or the prompt, places the shape


def test_the_prompt_still_sets_the_colours(judged):
    colours = share(judged[True], EVAL, "colour")
    backgrounds = float(np.mean([j.background == s.background for j, s in zip(judged[True], EVAL)]))
    print(f"\nwith the ControlNet: shape colours right {colours:.0%}, backgrounds right {backgrounds:.0%}")
    assert colours >= 0.8 and backgrounds >= 0.8


def test_guidance_that_ends_early_still_places_the_shape_and_weight_zero_is_a_no_op(demo, manager):
    scene = EVAL[0]
    assert judge(run(demo, manager, scene, 0, guidance_end=0.5)).position == scene.position
    off = run(demo, manager, scene, 0, weight=0.0)
    plain = run(demo, manager, scene, 0, controlled=False)
    assert np.array_equal(np.asarray(off), np.asarray(plain))
