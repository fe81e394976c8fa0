"""Label words as vocabulary ids, as LM-BFF looks them up."""

from __future__ import annotations

from typing import Any

from registry import BenchError

# LM-BFF looks these label words up as-is instead of tokenizing ' ' + word.
_VERBATIM_LABEL_STARTS = ("<", "[", ".", ",")


def _single_token_suggestions(tokenizer: Any, word: str) -> list[str]:
    found = []
    for candidate in dict.fromkeys((word.lower(), word.capitalize(), word.upper(), word.strip())):
        if candidate and candidate != word and _try_label_word_id(tokenizer, candidate) is not None:
            found.append(candidate)
    return found


def _try_label_word_id(tokenizer: Any, word: str) -> int | None:
    if word.startswith(_VERBATIM_LABEL_STARTS):
        token_id = tokenizer.convert_tokens_to_ids(word)
        if token_id is None or (token_id == tokenizer.unk_token_id and word != tokenizer.unk_token):
            return None
        return int(token_id)
    pieces = tokenizer.tokenize(" " + word)
    if len(pieces) != 1:
        return None
    token_id = tokenizer.convert_tokens_to_ids(pieces[0])
    if token_id is None or token_id == tokenizer.unk_token_id:
        return None
    return int(token_id)


def label_word_id(tokenizer: Any, word: str) -> int:
    """The vocabulary id of label word ``word``, as LM-BFF computes it.

    Words starting with ``<``, ``[``, ``.`` or ``,`` are looked up verbatim; any other word is
    tokenized with a leading space (``' great'`` -> ``'Ġgreat'`` for byte-level BPE, ``'great'``
    for WordPiece) and must give exactly one known token. Raises `BenchError` otherwise.
    """
    token_id = _try_label_word_id(tokenizer, word)
    if token_id is not None:
        return token_id
    if word.startswith(_VERBATIM_LABEL_STARTS):
        problem = "is not in the tokenizer's vocabulary (words starting with <, [, . or , are looked up as-is)"
    else:
        pieces = tokenizer.tokenize(" " + word)
        problem = f"is not a single token: ' {word}' tokenizes to {pieces}"
    suggestions = _single_token_suggestions(tokenizer, word)
    hint = f"e.g. {', '.join(repr(s) for s in suggestions)}" if suggestions else "e.g. 'great', 'good', 'Yes'"
    raise BenchError(f"label word '{word}' {problem}; choose a word that is one token for this backbone ({hint})")
