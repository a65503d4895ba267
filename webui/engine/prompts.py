"""What a parsed prompt is: AND-parts with weights, each a schedule of weighted text over the steps.

The engine only needs this structure; parsing a prompt's syntax into it is an extension hook
(`parse_prompt`; the built-in `prompt_weighting` extension implements AUTOMATIC1111's grammar).
Without a parser a prompt is literal text: one part, weight 1, the same at every step.

Steps are counted as A1111 does: a `ScheduledText` with `end_at_step = n` is used while the
0-based sampling step is <= n; the last entry of a schedule always has `end_at_step = steps`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WeightedText:
    """A run of prompt text whose tokens are multiplied by `weight` (emphasis; 1.0 = unchanged)."""

    text: str
    weight: float = 1.0


@dataclass(frozen=True)
class ChunkBreak:
    """`BREAK`: the tokens after it start a new 75-token chunk."""


Piece = WeightedText | ChunkBreak


@dataclass(frozen=True)
class ScheduledText:
    """The text of one AND-part, in effect up to and including 0-based step `end_at_step`."""

    end_at_step: int
    pieces: tuple[Piece, ...]


@dataclass(frozen=True)
class PromptPart:
    """One AND-part of a prompt (composable diffusion): its guidance weight and its schedule."""

    weight: float
    schedule: tuple[ScheduledText, ...]


@dataclass(frozen=True)
class ParsedPrompt:
    """A whole prompt. A negative prompt always has exactly one part, of weight 1."""

    parts: tuple[PromptPart, ...]

    @classmethod
    def literal(cls, text: str, steps: int) -> ParsedPrompt:
        """The prompt as plain text: what the engine uses when no extension parses prompts."""
        return cls((PromptPart(1.0, (ScheduledText(steps, (WeightedText(text),)),)),))

    def texts(self) -> list[tuple[Piece, ...]]:
        """Every distinct piece sequence, in order of first appearance (each is encoded once)."""
        seen: dict[tuple[Piece, ...], None] = {}
        for part in self.parts:
            for entry in part.schedule:
                seen.setdefault(entry.pieces, None)
        return list(seen)


def pieces_at_step(schedule: tuple[ScheduledText, ...], step: int) -> tuple[Piece, ...]:
    """The pieces in effect at 0-based `step` (the last entry after the end of the schedule)."""
    for entry in schedule:
        if step <= entry.end_at_step:
            return entry.pieces
    return schedule[-1].pieces
