"""A small tokenizer in the CLIP format (vocab.json + merges.txt) for the demo model's words.

The vocabulary is CLIP's layout at a smaller scale: the 256 byte symbols, the same with the end-of-word
marker `</w>`, then one token per BPE merge, then `<|startoftext|>` and `<|endoftext|>` last. The
merges are learned from the word list with plain BPE (most frequent adjacent pair first), run until
every listed word is a single token; any other text still tokenizes, into smaller pieces.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from webui.engine.models.text_encoders import _bytes_to_unicode

END = "</w>"


def learn_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """BPE merges, in rank order, that turn each word into one symbol."""
    pieces = {w: [*w[:-1], w[-1] + END] for w in sorted(set(words))}
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(pair for seq in pieces.values() for pair in zip(seq, seq[1:]))
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))  # most frequent, ties broken alphabetically
        merges.append(best)
        for word, seq in pieces.items():
            merged, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    merged.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    merged.append(seq[i])
                    i += 1
            pieces[word] = merged


def build_vocab(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    merges = learn_merges(words)
    byte_chars = _bytes_to_unicode()
    tokens = byte_chars + [c + END for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer(folder: Path, words: Iterable[str]) -> int:
    """Write vocab.json and merges.txt into `folder`; returns the vocabulary size."""
    vocab, merges = build_vocab(words)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(vocab)
