"""AUTOMATIC1111's prompt syntax: AND-parts, prompt editing, alternation, emphasis and BREAK.

Pure functions of the text and the step count that give what A1111's `modules/prompt_parser.py`
gives. Malformed text never raises: what the grammar does not accept is taken literally, as in A1111.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from webui.engine.prompts import ChunkBreak, ParsedPrompt, Piece, PromptPart, ScheduledText, WeightedText

# The lookahead leaves AND_PERP / AND_SALT / AND_TOPK (other extensions' operators) alone.
_AND = re.compile(r"\bAND\b(?!_PERP|_SALT|_TOPK)")
# A part's optional trailing ":weight"; the lazy text group also drops the part's trailing whitespace.
_PART_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")

# Plain text of the schedule grammar: anything but its syntax characters, or a backslash escape.
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
# The tail of an edit `[...:when]`: lark's SIGNED_NUMBER, optionally padded with whitespace.
_EDIT_END = re.compile(
    r"\s*([+-]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?))\s*\]"
)

_ATTENTION_TOKEN = re.compile(
    r"""
    \\[()\[\]\\]?             # escape; a backslash before anything else is dropped
    | [(\[]
    | :\s*([+-]?[.\d]+)\s*\)  # explicit weight closing a round bracket
    | [)\]]
    | [^\\()\[\]:]+
    | :
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
# A1111 marks BREAK in its attention list as ("BREAK", -1); brackets around it scale that -1,
# and then A1111 encodes the word as text, so only an unscaled marker is a chunk break.
_BREAK_MARK = ("BREAK", -1.0)
_ROUND = 1.1
_SQUARE = 1 / 1.1


@dataclass(frozen=True)
class _Edit:
    """`[before:after:when]`; `before` is None for `[after:when]`, `when` is the number as written."""

    before: tuple[_Node, ...] | None
    after: tuple[_Node, ...]
    when: str


@dataclass(frozen=True)
class _Alternation:
    """`[a|b|c]`: one option per step, in turn."""

    options: tuple[tuple[_Node, ...], ...]


_Node = str | _Edit | _Alternation


class _Unparsable(Exception):
    """The schedule grammar rejects the text (a `|` outside brackets, a dangling backslash)."""


class _ScheduleParser:
    """Recursive descent over A1111's schedule grammar.

    At the top level a bracket that does not open a well-formed construct is a literal character;
    inside a construct every bracket must open one. When a construct sits among such literal
    brackets (`[a:3]:`), both readings parse and A1111's lark parser picks one by set order, which
    changes with PYTHONHASHSEED; this parser always takes the construct, one of A1111's readings.
    A construct parses the same whatever surrounds it, so each is memoised by position.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.constructs: dict[int, tuple[list[_Node], int] | None] = {}

    def parse(self) -> tuple[_Node, ...]:
        text, nodes, pos = self.text, [], 0
        while pos < len(text):
            pos = self._plain(pos, nodes)
            if pos == len(text):
                break
            found = self._construct(pos) if text[pos] in "([" else None
            if found is not None:
                nodes.extend(found[0])
                pos = found[1]
            elif text[pos] in "[]():":
                nodes.append(text[pos])
                pos += 1
            else:  # `|` outside brackets, or a backslash at the end or before a newline
                raise _Unparsable
        return tuple(nodes)

    def _plain(self, pos: int, nodes: list[_Node]) -> int:
        match = _PLAIN.match(self.text, pos)
        if match:
            nodes.append(match.group())
            return match.end()
        return pos

    def _sequence(self, pos: int) -> tuple[list[_Node], int] | None:
        """Text and constructs up to the next `] ) : |` or the end; None if a bracket is malformed."""
        nodes: list[_Node] = []
        while pos < len(self.text):
            pos = self._plain(pos, nodes)
            if pos == len(self.text) or self.text[pos] not in "([":
                break
            found = self._construct(pos)
            if found is None:
                return None
            nodes.extend(found[0])
            pos = found[1]
        return nodes, pos

    def _construct(self, start: int) -> tuple[list[_Node], int] | None:
        if start not in self.constructs:
            self.constructs[start] = self._read_construct(start)
        return self.constructs[start]

    def _read_construct(self, start: int) -> tuple[list[_Node], int] | None:
        text, opener = self.text, self.text[start]
        first = self._sequence(start + 1)
        if first is None:
            return None
        body, pos = first
        closer = text[pos : pos + 1]
        if opener == "(":
            if closer == ")":
                return ["(", *body, ")"], pos + 1
            if closer == ":":  # `(text:weight)`: emphasis is left in the text for parse_attention
                second = self._sequence(pos + 1)
                if second is not None and text[second[1] : second[1] + 1] == ")":
                    return ["(", *body, ":", *second[0], ")"], second[1] + 1
            return None
        if closer == "]":
            return ["[", *body, "]"], pos + 1
        if closer == "|":
            options = [tuple(body)]
            while text[pos : pos + 1] == "|":
                found = self._sequence(pos + 1)
                if found is None:
                    return None
                options.append(tuple(found[0]))
                pos = found[1]
            if text[pos : pos + 1] != "]":
                return None
            return [_Alternation(tuple(options))], pos + 1
        if closer == ":":
            end = _EDIT_END.match(text, pos + 1)
            if end:
                return [_Edit(None, tuple(body), end.group(1))], end.end()
            second = self._sequence(pos + 1)
            if second is not None and text[second[1] : second[1] + 1] == ":":
                end = _EDIT_END.match(text, second[1] + 1)
                if end:
                    return [_Edit(tuple(body), tuple(second[0]), end.group(1))], end.end()
        return None


def _edit_step(when: str, steps: int) -> int:
    """A1111's rule: a number written with a '.' is a fraction of the steps, else a step number."""
    value = float(when) * steps if "." in when else float(when)
    return min(steps, int(value))  # int() of an infinite value raises OverflowError


def _change_steps(nodes: tuple[_Node, ...], steps: int, found: set[int]) -> None:
    """Every step after which some construct changes, inactive branches included (as A1111)."""
    for node in nodes:
        if isinstance(node, _Edit):
            when = _edit_step(node.when, steps)
            if when >= 1:
                found.add(when)
            _change_steps(node.before or (), steps, found)
            _change_steps(node.after, steps, found)
        elif isinstance(node, _Alternation):
            found.update(range(1, steps + 1))
            for option in node.options:
                _change_steps(option, steps, found)


def _render(nodes: tuple[_Node, ...], step: int, steps: int) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Edit):
            active = node.before if step <= _edit_step(node.when, steps) else node.after
            out.append(_render(active or (), step, steps))
        else:
            out.append(_render(node.options[(step - 1) % len(node.options)], step, steps))
    return "".join(out)


def _schedule_texts(text: str, steps: int) -> list[tuple[int, str]]:
    """A1111's `get_learned_conditioning_prompt_schedules` for one prompt: (end_at_step, text)."""
    try:
        nodes = _ScheduleParser(text).parse()
        ends = {steps}
        _change_steps(nodes, steps, ends)
        return [(end, _render(nodes, end, steps)) for end in sorted(ends)]
    except (_Unparsable, OverflowError, RecursionError):
        # A1111 takes unparsable text literally; it crashes on an infinite `when` and may manage
        # deeper nesting than Python's recursion limit, where this takes the text literally too.
        return [(steps, text)]


def _weights_of(text: str) -> list[list]:
    """A1111's `parse_prompt_attention` result: [text, weight] pairs, BREAK as ["BREAK", -1]."""
    res: list[list] = []
    round_opens: list[int] = []
    square_opens: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for entry in res[start:]:
            entry[1] *= factor

    for match in _ATTENTION_TOKEN.finditer(text):
        token, weight = match.group(), match.group(1)
        if weight is not None and round_opens:
            try:
                factor = float(weight)
            except ValueError:  # e.g. "(a:..)", where A1111 crashes: keep the text, close the bracket
                res.append([token[:-1], 1.0])
                token = ")"
            else:
                scale_from(round_opens.pop(), factor)
                continue
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_opens.append(len(res))
        elif token == "[":
            square_opens.append(len(res))
        elif token == ")" and round_opens:
            scale_from(round_opens.pop(), _ROUND)
        elif token == "]" and square_opens:
            scale_from(square_opens.pop(), _SQUARE)
        else:
            for i, chunk in enumerate(_BREAK.split(token)):
                if i:
                    res.append(list(_BREAK_MARK))
                res.append([chunk, 1.0])
    # Unclosed brackets apply to everything after them.
    for start in round_opens:
        scale_from(start, _ROUND)
    for start in square_opens:
        scale_from(start, _SQUARE)
    if not res:
        res = [["", 1.0]]
    merged = [res[0]]
    for entry in res[1:]:
        if entry[1] == merged[-1][1]:
            merged[-1][0] += entry[0]
        else:
            merged.append(entry)
    return merged


def parse_attention(text: str) -> list[Piece]:
    """Emphasis only: `(x)`, `[x]`, `(x:1.3)`, escapes and BREAK, as weighted runs and chunk breaks."""
    return [
        ChunkBreak() if (t, w) == _BREAK_MARK else WeightedText(t, float(w)) for t, w in _weights_of(text)
    ]


def _split_weight(part: str) -> tuple[str, float]:
    match = _PART_WEIGHT.search(part)
    if match is None:
        return part, 1.0
    text, weight = match.groups()
    return text, float(weight) if weight is not None else 1.0


def parse_prompt(text: str, steps: int, *, allow_and: bool = True) -> ParsedPrompt:
    """The whole prompt; `allow_and=False` (negative prompts) keeps AND and `:weight` as text."""
    parts = [_split_weight(chunk) for chunk in _AND.split(text)] if allow_and else [(text, 1.0)]
    result = []
    for part_text, weight in parts:
        pieces: dict[str, tuple[Piece, ...]] = {}  # alternation repeats the same few texts
        schedule = []
        for end, scheduled in _schedule_texts(part_text, steps):
            if scheduled not in pieces:
                pieces[scheduled] = tuple(parse_attention(scheduled))
            schedule.append(ScheduledText(end, pieces[scheduled]))
        result.append(PromptPart(weight, tuple(schedule)))
    return ParsedPrompt(tuple(result))
