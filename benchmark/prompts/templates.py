"""LM-BFF template strings: parsing into parts and checking them against a task."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from registry import BenchError

_SPECIAL_PARTS = ("cls", "mask", "sep", "sep+")
_SENT_RE = re.compile(r"^(?P<space>\+?)sent(?P<case>[lu]?)(?P<drop>-?)_(?P<index>\d+)$")
_LABEL_RE = re.compile(r"^label_(?P<index>\d+)$")
_KNOWN_PARTS = (
    "*cls*, *mask*, *sep*, *sep+*, *sent_i*, *+sent_i*, *sent-_i*, *sentl_i*, *+sentl_i*, "
    "*sentl-_i*, *sentu_i*, *+sentu_i*, *label_i*"
)
_EXAMPLE_TEMPLATE = "*cls**sent_0*_It_was*mask*.*sep+*"


@dataclass(frozen=True)
class TemplatePart:
    """One part of a parsed template.

    ``kind`` is ``"text"`` for literal text (``text`` holds it with ``_`` already turned into
    spaces), one of ``"cls"``, ``"mask"``, ``"sep"``, ``"sep+"``, or ``"sent"`` / ``"label"`` with
    ``index`` set. Sentence parts carry their modifiers: ``space`` (``+``), ``case`` (``"l"``,
    ``"u"`` or ``""``) and ``drop_last`` (``-``).
    """

    kind: Literal["text", "cls", "mask", "sep", "sep+", "sent", "label"]
    text: str = ""
    index: int | None = None
    space: bool = False
    case: Literal["", "l", "u"] = ""
    drop_last: bool = False

    def apply(self, sentence: str) -> str:
        """Apply this sentence part's modifiers to ``sentence`` (in LM-BFF's order)."""
        if self.case == "l":
            sentence = sentence[:1].lower() + sentence[1:]
        elif self.case == "u":
            sentence = sentence[:1].upper() + sentence[1:]
        if self.drop_last:
            sentence = sentence[:-1]
        if self.space:
            sentence = " " + sentence
        return sentence


def parse_template(template: str) -> tuple[TemplatePart, ...]:
    """Split an LM-BFF template string into its parts, checking its syntax.

    Raises `BenchError` for an unmatched ``*``, an unknown ``*part*``, or a template whose
    number of ``*mask*`` parts is not exactly one.
    """
    pieces = template.split("*")
    if len(pieces) % 2 == 0:
        raise BenchError(
            f"template '{template}' has an unmatched '*'; every variable is written *name*, "
            f"e.g. '{_EXAMPLE_TEMPLATE}'"
        )
    parts: list[TemplatePart] = []
    for position, piece in enumerate(pieces):
        if position % 2 == 0:
            if piece:
                parts.append(TemplatePart("text", text=piece.replace("_", " ")))
            continue
        if piece in _SPECIAL_PARTS:
            parts.append(TemplatePart(piece))  # type: ignore[arg-type]
        elif match := _SENT_RE.match(piece):
            parts.append(
                TemplatePart(
                    "sent",
                    index=int(match["index"]),
                    space=bool(match["space"]),
                    case=match["case"],  # type: ignore[arg-type]
                    drop_last=bool(match["drop"]),
                )
            )
        elif match := _LABEL_RE.match(piece):
            parts.append(TemplatePart("label", index=int(match["index"])))
        else:
            raise BenchError(
                f"unknown template part '*{piece}*' in template '{template}'; known parts are "
                f"{_KNOWN_PARTS} (write spaces in literal text as '_')"
            )
    masks = sum(part.kind == "mask" for part in parts)
    if masks != 1:
        what = "no *mask*" if masks == 0 else f"{masks} *mask* parts"
        raise BenchError(
            f"template '{template}' has {what}; put exactly one *mask* where the label word goes, "
            f"e.g. '{_EXAMPLE_TEMPLATE}'"
        )
    return tuple(parts)


def _check_template(
    template: str, parts: Sequence[TemplatePart], *, num_sentences: int | None, num_labels: int | None, where: str
) -> None:
    for part in parts:
        if part.kind == "sent" and num_sentences is not None and part.index is not None:
            if part.index >= num_sentences:
                have = "sent_0" if num_sentences == 1 else f"sent_0..sent_{num_sentences - 1}"
                raise BenchError(
                    f"template '{template}' uses sentence {part.index} but {where} has {num_sentences} "
                    f"sentence(s); use only {have}"
                )
        if part.kind == "label" and num_labels is not None and part.index is not None:
            if part.index >= num_labels:
                raise BenchError(
                    f"template '{template}' uses *label_{part.index}* but {where} has {num_labels} labels; "
                    f"use *label_0*..*label_{num_labels - 1}*"
                )
