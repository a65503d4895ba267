"""The prompt parser against AUTOMATIC1111's own results (its doctests, and its code run on more cases)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extensions.builtin.prompt_weighting.parser import parse_attention, parse_prompt
from webui.engine.prompts import ChunkBreak, ParsedPrompt, WeightedText, pieces_at_step

BREAK = ChunkBreak()
W = WeightedText


def schedule(text: str, steps: int) -> list[tuple[int, tuple]]:
    """The single part's schedule, as (end_at_step, pieces)."""
    (part,) = parse_prompt(text, steps, allow_and=False).parts
    return [(entry.end_at_step, entry.pieces) for entry in part.schedule]


def texts(entries: list[tuple[int, str]]) -> list[tuple[int, tuple]]:
    """A1111 gives schedules as plain text; each is then split by emphasis."""
    return [(end, tuple(parse_attention(text))) for end, text in entries]


def assert_pieces(actual, expected) -> None:
    assert len(actual) == len(expected), (actual, expected)
    for got, want in zip(actual, expected):
        if isinstance(want, ChunkBreak):
            assert got == want
        else:
            assert isinstance(got, WeightedText) and got.text == want.text
            assert got.weight == pytest.approx(want.weight)


# parse_prompt_attention's doctests, then more cases run through A1111's function.
ATTENTION = [
    ("normal text", [W("normal text", 1.0)]),
    ("an (important) word", [W("an ", 1.0), W("important", 1.1), W(" word", 1.0)]),
    ("(unbalanced", [W("unbalanced", 1.1)]),
    ("\\(literal\\]", [W("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [W("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            W("a ", 1.0),
            W("house", 1.5730000000000004),
            W(" ", 1.1),
            W("on", 1.0),
            W(" a ", 1.1),
            W("hill", 0.55),
            W(", sun, ", 1.1),
            W("sky", 1.4641000000000006),
            W(".", 1.1),
        ],
    ),
    (
        "(a) (b:1.2) [c] ((d))",
        [W("a", 1.1), W(" ", 1.0), W("b", 1.2), W(" ", 1.0), W("c", 1 / 1.1), W(" ", 1.0), W("d", 1.1 * 1.1)],
    ),
    ("", [W("", 1.0)]),
    ("\\(a\\) \\\\ \\x", [W("(a) \\ x", 1.0)]),  # a backslash before an ordinary character is dropped
    ("a:1.2)", [W("a:1.2)", 1.0)]),  # no open bracket: the weight is text
    (")]", [W(")]", 1.0)]),
    ("[(a]:1.5)", [W("a", 1.5 / 1.1)]),  # brackets of different kinds close independently
    ("(a:1.2 )", [W("a", 1.2)]),
    ("(a: 1.2)", [W("a", 1.2)]),
    ("(a :1.2)", [W("a ", 1.2)]),
    ("[unbalanced (too", [W("unbalanced ", 1 / 1.1), W("too", 1.0)]),  # 1.1 * (1/1.1) rounds to 1.0
    ("a BREAK b", [W("a", 1.0), BREAK, W("b", 1.0)]),
    ("BREAK", [W("", 1.0), BREAK, W("", 1.0)]),
    ("x\nBREAK\ny", [W("x", 1.0), BREAK, W("y", 1.0)]),
    ("a BREAKb", [W("a BREAKb", 1.0)]),
    # Inside brackets A1111's BREAK marker gets scaled, and then A1111 encodes it as the word.
    ("(a BREAK b)", [W("a", 1.1), W("BREAK", -1.1), W("b", 1.1)]),
    ("(a BREAK b:0)", [W("aBREAKb", 0.0)]),
    ("(a:..)", [W("a:..", 1.1)]),  # A1111 crashes here; the text is kept and the bracket closes
]


@pytest.mark.parametrize(("text", "expected"), ATTENTION)
def test_attention_matches_a1111(text, expected):
    assert_pieces(parse_attention(text), expected)


FANTASY_100 = [
    (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
    (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
    (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
    (75, "fantasy landscape with a lake and an oak in background masterful"),
    (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
]

# get_learned_conditioning_prompt_schedules's doctests (10 steps), then more cases run through it.
SCHEDULES = [
    ("test", 10, [(10, "test")]),
    ("a [b:3]", 10, [(3, "a "), (10, "a b")]),
    ("a [b: 3]", 10, [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", 10, [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", 10, [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", 10, [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", 10, [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", 10, [(10, "a [unbalanced")]),
    ("a [b:.5] c", 10, [(5, "a  c"), (10, "a b c")]),
    # A1111's doctest claims a schedule here, but its grammar (a `|` outside an alternation) rejects it.
    ("a [{b|d{:.5] c", 10, [(10, "a [{b|d{:.5] c")]),
    ("((a][:b:c [d:3]", 10, [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", 10, [(s, "a" if s % 2 else "(b:1.1)") for s in range(1, 11)]),
    ("[fe|]male", 10, [(s, "female" if s % 2 else "male") for s in range(1, 11)]),
    ("[fe|||]male", 10, [(s, "female" if s % 4 == 1 else "male") for s in range(1, 11)]),
    (
        "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
        "[ in foreground::0.6][: in background:0.25] [shoddy:masterful:0.5]",
        100,
        FANTASY_100,
    ),
    (
        "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
        "[ in foreground::0.6][:in background:0.25] [shoddy:masterful:0.5]",
        100,
        [
            (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
            (50, "fantasy landscape with a lake and an oak in foregroundin background shoddy"),
            (60, "fantasy landscape with a lake and an oak in foregroundin background masterful"),
            (75, "fantasy landscape with a lake and an oakin background masterful"),
            (100, "fantasy landscape with a lake and a christmas treein background masterful"),
        ],
    ),
    # `when` with a '.' is a fraction of the steps, without one a step number; int() truncates.
    ("[a:b:1]", 10, [(1, "a"), (10, "b")]),
    ("[a:b:1.0]", 10, [(10, "a")]),
    ("[a:b:0.29]", 100, [(28, "a"), (100, "b")]),  # 0.29 * 100 = 28.999999999999996
    ("[a:b:1e1]", 10, [(10, "a")]),
    ("[a:b:25]", 10, [(10, "a")]),  # clamped to the steps
    ("[a:b:-1]", 10, [(10, "b")]),
    ("[a:b:0]", 10, [(10, "b")]),
    ("[a:b: 3 ]", 10, [(3, "a"), (10, "b")]),
    ("[:3]", 10, [(3, ""), (10, "")]),
    ("[a:b:x]", 10, [(10, "[a:b:x]")]),
    ("[a:b:1:2]", 10, [(10, "[a:b:1:2]")]),
    ("[a|b|c]", 4, [(1, "a"), (2, "b"), (3, "c"), (4, "a")]),
    ("[|a]", 3, [(1, ""), (2, "a"), (3, "")]),
    ("[a:[b|c]:2]", 4, [(1, "a"), (2, "a"), (3, "b"), (4, "c")]),
    ("(a:b:c) [x:2]", 10, [(2, "(a:b:c) "), (10, "(a:b:c) x")]),
    ("[x (a:b:c) y:3]", 10, [(10, "[x (a:b:c) y:3]")]),  # no colon allowed inside a bracket's text
    ("[a\\:b:3]", 10, [(3, ""), (10, "a\\:b")]),
    ("a\\\\ [b:3]", 10, [(3, "a\\\\ "), (10, "a\\\\ b")]),
    # The grammar rejects these, so the whole part is literal text.
    ("x|y [a:3]", 10, [(10, "x|y [a:3]")]),
    ("[a:3] x\\", 10, [(10, "[a:3] x\\")]),
    ("[a:3] x\\\ny", 10, [(10, "[a:3] x\\\ny")]),
    ("[a:b:1e400]", 10, [(10, "[a:b:1e400]")]),  # A1111 crashes on the infinite step
    ("[a:b:3]", 1, [(1, "a")]),
    ("[a|b]", 1, [(1, "a")]),
]


@pytest.mark.parametrize(("text", "steps", "expected"), SCHEDULES)
def test_schedule_matches_a1111(text, steps, expected):
    assert schedule(text, steps) == texts(expected)


def test_schedule_entries_are_split_by_emphasis():
    assert schedule("[(cat:1.3):dog:2] BREAK x", 4) == [
        (2, (W("cat", 1.3), W("", 1.0), BREAK, W("x", 1.0))),
        (4, (W("dog", 1.0), BREAK, W("x", 1.0))),
    ]


def test_and_splits_into_weighted_parts():
    parsed = parse_prompt("a cat [x:y:2]:1.5 AND a dog :0.5  AND plain", 4)
    assert [part.weight for part in parsed.parts] == [1.5, 0.5, 1.0]
    cat, dog, plain = parsed.parts
    assert [(e.end_at_step, e.pieces) for e in cat.schedule] == texts([(2, "a cat x"), (4, "a cat y")])
    assert dog.schedule[0].pieces == (W(" a dog"),)
    assert plain.schedule[0].pieces == (W(" plain"),)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cat:2", [("cat", 2.0)]),  # one part takes a weight too
        ("[a:b:3", [("[a:b", 3.0)]),
        ("(a:1.2)", [("(a:1.2)", 1.0)]),
        ("a AND AND b", [("a", 1.0), ("", 1.0), (" b", 1.0)]),
        ("ANDROID AND x", [("ANDROID", 1.0), (" x", 1.0)]),
        ("a AND_PERP b", [("a AND_PERP b", 1.0)]),
        ("a ANDb", [("a ANDb", 1.0)]),
    ],
)
def test_and_weights_match_a1111(text, expected):
    parts = parse_prompt(text, 10).parts
    assert [(part.schedule[0].pieces, part.weight) for part in parts] == [
        (tuple(parse_attention(part_text)), weight) for part_text, weight in expected
    ]


def test_negative_prompts_keep_and_and_weight_as_text():
    parsed = parse_prompt("a AND b:2", 10, allow_and=False)
    assert parsed == ParsedPrompt.literal("a AND b:2", 10)


def test_alternation_cycles_per_step():
    (part,) = parse_prompt("a [cat|dog] photo", 150).parts
    assert len(part.schedule) == 150
    assert pieces_at_step(part.schedule, 0) == (W("a cat photo"),)
    assert pieces_at_step(part.schedule, 1) == (W("a cat photo"),)
    assert pieces_at_step(part.schedule, 2) == (W("a dog photo"),)
    assert pieces_at_step(part.schedule, 149) == (W("a cat photo"),)


def test_deep_nesting_is_literal_not_an_error():
    text = "[" * 3000 + "a:3" + "]" * 3000
    (part,) = parse_prompt(text, 10).parts
    assert [entry.end_at_step for entry in part.schedule] == [10]


# Heavy in syntax characters, so that most texts are malformed in some way.
ATOMS = ["(", ")", "[", "]", ":", "|", "\\", "\n", " ", "  ", "a", "cat", "0", "1", "3", ".", ".5", "-"]
ATOMS += ["1e2", "AND", " AND ", "BREAK", " BREAK ", ":1.2)", ":0.5]", "|"]
PROMPT_TEXT = st.lists(st.sampled_from(ATOMS) | st.text(max_size=3), max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=PROMPT_TEXT, steps=st.integers(1, 150), allow_and=st.booleans())
def test_any_text_parses_to_a_well_formed_prompt(text, steps, allow_and):
    parsed = parse_prompt(text, steps, allow_and=allow_and)
    assert parsed.parts
    if not allow_and:
        assert len(parsed.parts) == 1 and parsed.parts[0].weight == 1.0
    for part in parsed.parts:
        ends = [entry.end_at_step for entry in part.schedule]
        assert ends and ends[-1] == steps
        assert ends == sorted(set(ends)) and ends[0] >= 1
        for entry in part.schedule:
            assert entry.pieces
            assert all(isinstance(p, ChunkBreak) or isinstance(p.weight, float) for p in entry.pieces)
