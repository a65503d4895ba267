"""The demo data set: deterministic scenes, captions that describe them, and a pixel judge that reads
the rendered scenes back correctly."""

import numpy as np
from PIL import Image

from webui.demo_model.scenes import COLOURS, PALETTE, POSITIONS, SHAPES, Scene, caption, render, scenes, with_style
from webui.demo_model.scoring import colour_share, judge, score


def test_scenes_are_deterministic_by_seed_and_cover_the_vocabulary():
    a, b = scenes(5, 400), scenes(5, 400)
    assert a == b and a != scenes(6, 400)
    assert {s.shape for s in a} == set(SHAPES) and {s.colour for s in a} == set(COLOURS)
    assert {s.position for s in a} == set(POSITIONS) and len(COLOURS) >= 8
    assert all(s.colour != s.background for s in a)
    assert np.array_equal(render(a[0]), render(b[0]))


def test_full_caption_names_everything_and_phrasings_leave_parts_out():
    scene = scenes(1, 1)[0]
    text = caption(scene)
    for word in (scene.shape, scene.colour, scene.background, scene.size, scene.position):
        assert word in text
    rng = np.random.default_rng(0)
    phrasings = [caption(scene, rng) for _ in range(400)]
    assert len(set(phrasings)) > 4 and all(scene.shape in p or p == scene.colour for p in phrasings)
    assert scene.colour in phrasings  # the colour alone, as in a negative prompt
    assert any(scene.colour not in p for p in phrasings)  # the shape without its colour


def test_rendered_pixels_are_the_palette_colours():
    scene = scenes(3, 1)[0]
    image = render(scene, 128)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    assert tuple(image[0, 0]) == scene.rgb("background")
    assert colour_share(image, scene.colour) > 0.02


def test_the_judge_reads_rendered_scenes_back():
    truth = scenes(1234, 200)
    scores = score(truth, [Image.fromarray(render(s)) for s in truth])
    assert scores.colours >= 0.98 and scores.positions >= 0.98, scores
    assert scores.colour_error < 15, scores  # the scenes' colours are jittered (COLOUR_JITTER per channel)


def test_the_judge_tells_hollow_from_filled_and_finds_no_shape_in_a_flat_image():
    scene = scenes(9, 1)[0]
    assert judge(render(scene)).hollowness < 0.3
    assert judge(render(with_style(scene, "hollow"))).hollowness > 0.5
    flat = np.full((64, 64, 3), PALETTE["blue"], dtype=np.uint8)
    assert judge(flat).colour is None and judge(flat).background == "blue"


def test_specks_do_not_move_the_judged_shape():
    scene = Scene("circle", "red", "blue", "medium", "bottom right")
    image = render(scene)
    image[:3, :4] = PALETTE["yellow"]  # as the demo VAE leaves in the top-left corner
    judged, clean = judge(image), judge(render(scene))
    assert (judged.position, judged.colour) == ("bottom right", "red")
    assert judged.hollowness == clean.hollowness < 0.1
