"""A word tokenizer built in code over the captions' vocabulary, for a small text encoder trained from scratch.

It is a transformers ``CLIPTokenizer`` (so it saves and loads with the model like SD1.5's): every character of
:data:`CHARACTERS` is a token (word-internal and word-final ``</w>`` forms), and every word seen in the captions
becomes one token through BPE merges that join it left to right. Words never seen fall back to characters, so no
caption is ever unknown. Ids 0/1 are start/end (end also pads), as in the tiny test tokenizer.

transformers only; must never import ``cvd_scene``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable

__all__ = ["CHARACTERS", "build_word_tokenizer", "caption_words"]

CHARACTERS = string.ascii_lowercase + string.digits + ",.!?'-"
"""Characters that are tokens of their own (anything else is unknown)."""

# The pre-tokenizer's split of CLIP: letter runs, single digits, runs of other non-space characters.
_SPLIT = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")


def caption_words(texts: Iterable[str]) -> list[str]:
    """The distinct pre-tokenized words of ``texts`` (lower case), sorted, restricted to :data:`CHARACTERS`."""
    words = set()
    for t in texts:
        for w in _SPLIT.findall(t.lower()):
            if all(c in CHARACTERS for c in w):
                words.add(w)
    return sorted(words)


def build_word_tokenizer(texts: Iterable[str], max_length: int = 48, max_rounds: int = 8):
    """A CLIP tokenizer whose vocabulary holds every word of ``texts`` as one token (see the module docstring).

    Merges are generated left to right per word; when merges of different words pre-empt each other (BPE applies
    the lowest-ranked merge first), the pieces a word still splits into are joined by extra merges, for up to
    ``max_rounds`` rounds. Returns the tokenizer (``len(tokenizer)`` is the text encoder's vocabulary size)."""
    from transformers import CLIPTokenizer

    words = caption_words(texts)
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in CHARACTERS:
        vocab.setdefault(c, len(vocab))
    for c in CHARACTERS:
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()

    def add_chain(pieces: list[str]) -> None:
        cur = pieces[0]
        for p in pieces[1:]:
            m = (cur, p)
            cur = cur + p
            if m not in seen:
                seen.add(m)
                merges.append(m)
            vocab.setdefault(cur, len(vocab))

    for w in words:
        if len(w) > 1:
            add_chain(list(w[:-1]) + [w[-1] + "</w>"])
    tok = CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=max_length)
    for _ in range(max_rounds):
        split = [(w, tok.tokenize(w)) for w in words]
        split = [(w, t) for w, t in split if len(t) > 1]
        if not split:
            break
        for _, pieces in split:
            add_chain(pieces)
        tok = CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=max_length)
    return tok
