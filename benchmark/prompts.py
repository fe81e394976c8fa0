"""LM-BFF prompt encoding: templates, label words, truncation, and padded batches.

A template is an LM-BFF template string such as ``*cls**sent_0*_It_was*mask*.*sep+*``. It is read
as alternating literal text and ``*variable*`` parts:

==================  ===========================================================================
``*cls*``           the tokenizer's CLS token (``<s>`` for RoBERTa)
``*mask*``          the mask token; the model reads the label words' logits here (exactly one)
``*sep*``           the SEP token (``</s>`` for RoBERTa)
``*sep+*``          the SEP token, and the segment (token type) id goes up by one after it
``*sent_i*``        sentence ``i`` of the example
``*+sent_i*``       sentence ``i`` with a leading space (so BPE sees a word start)
``*sent-_i*``       sentence ``i`` without its last character (usually the final punctuation)
``*sentl_i*``       sentence ``i`` with its first letter lower-cased (``*sentu_i*``: upper-cased)
``*label_i*``       the label word of label ``i``
==================  ===========================================================================

Sentence modifiers combine as in LM-BFF (``*+sentl_1*``, ``*sentl-_0*``, ``*+sentu_0*``). In literal
text ``_`` stands for a space; a one-character literal is looked up in the vocabulary directly.

Behaviour matches ``tokenize_multipart_input`` of princeton-nlp/LM-BFF (and its copy in
LM-Kernel-FT): each sentence part is truncated to ``first_sent_limit`` (sentence 0) or
``other_sent_limit`` (other sentences) tokens, the whole input is then cut to ``max_seq_len`` from
the tail (or the head with ``truncate_head``), and an input whose mask was cut away is an error.
Label words get a leading space before tokenization (so ``great`` becomes ``Ġgreat`` for
byte-level BPE) unless they start with ``<``, ``[``, ``.`` or ``,``, and each must be one token.
Without a template (``--template none``) inputs are the standard ``[CLS] s0 [SEP] (s1 [SEP])``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

import registry
from benchmark.config import NO_TEMPLATE
from benchmark.examples import Example
from registry import BenchError, TaskSpec, TemplateSpec

logger = logging.getLogger(__name__)

__all__ = [
    "EncodedExample",
    "EncodedSplit",
    "PromptEncoder",
    "TemplatePart",
    "label_word_id",
    "parse_template",
    "register_task_templates",
    "resolve_prompt",
]

_SPECIAL_PARTS = ("cls", "mask", "sep", "sep+")
_SENT_RE = re.compile(r"^(?P<space>\+?)sent(?P<case>[lu]?)(?P<drop>-?)_(?P<index>\d+)$")
_LABEL_RE = re.compile(r"^label_(?P<index>\d+)$")
_KNOWN_PARTS = (
    "*cls*, *mask*, *sep*, *sep+*, *sent_i*, *+sent_i*, *sent-_i*, *sentl_i*, *+sentl_i*, "
    "*sentl-_i*, *sentu_i*, *+sentu_i*, *label_i*"
)
_EXAMPLE_TEMPLATE = "*cls**sent_0*_It_was*mask*.*sep+*"
# LM-BFF looks these label words up as-is instead of tokenizing ' ' + word.
_VERBATIM_LABEL_STARTS = ("<", "[", ".", ",")


# --------------------------------------------------------------------------------------------
# Template parsing
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Template registry and resolution
# --------------------------------------------------------------------------------------------

# Task-independent alternates from the LM-BFF paper's manual templates (label words: the task's).
_ALTERNATES: tuple[tuple[str, str, str], ...] = (
    ("it-was", "*cls**sent_0*_It_was*mask*.*sep+*", "LM-BFF manual sentiment template '<S1> It was [MASK] .'"),
    ("this-is", "*cls**sent_0*_This_is*mask*.*sep+*", "LM-BFF manual template '<S1> This is [MASK] .' (Subj, CoLA)"),
    ("mask-colon", "*cls**mask*:*+sent_0**sep+*", "LM-BFF manual template '[MASK] : <S1>' (TREC)"),
    (
        "nli-question",
        "*cls**sent-_0*?*mask*,*+sentl_1**sep+*",
        "LM-BFF manual NLI template '<S1> ? [MASK] , <S2>' (MNLI, SNLI, QNLI, RTE)",
    ),
    (
        "pair-comma",
        "*cls**sent_0**mask*,*+sentl_1**sep+*",
        "LM-BFF manual paraphrase template '<S1> [MASK] , <S2>' (MRPC, QQP)",
    ),
)


def register_task_templates() -> None:
    """Register a template named after every registered task, plus a few generic alternates.

    For each task ``t`` not yet in `registry.TEMPLATES` this adds ``TemplateSpec(name=t,
    template=<t's default>, label_words=<t's label words>, description="LM-BFF default for t")``.
    It is idempotent and cheap, and `resolve_prompt` calls it, so tasks registered later (plugins,
    task files) are picked up at the next call.
    """
    registry.load_builtins()
    templates = registry.TEMPLATES
    # `registered` does not discover plugins: the task templates are built-ins and go in first, so a plugin
    # template of the same name is refused (an error naming it) rather than silently taking their place.
    for name in registry.TASKS.names():
        if templates.registered(name):
            continue
        try:
            task = registry.TASKS.get(name)
        except BenchError:  # a broken plugin task (already reported in one warning line) has no template
            continue
        templates.add(
            name,
            TemplateSpec(
                name=name,
                template=task.template,
                label_words=dict(task.label_words),
                description=f"LM-BFF default for {name}",
            ),
        )
    for name, template, description in _ALTERNATES:
        if not templates.registered(name):
            templates.add(name, TemplateSpec(name=name, template=template, description=description))


def _label_words_dict(task: TaskSpec, label_words: tuple[str, ...] | list[str] | dict[str, str]) -> dict[str, str]:
    if isinstance(label_words, dict):
        unknown = [label for label in label_words if label not in task.labels]
        if unknown:
            raise BenchError(
                f"unknown label(s) {unknown} in label words for task '{task.name}'; its labels are "
                f"{list(task.labels)}"
            )
        words = dict(label_words)
    else:
        if len(label_words) != task.num_labels:
            raise BenchError(
                f"got {len(label_words)} label words {list(label_words)} but task '{task.name}' has "
                f"{task.num_labels} labels {list(task.labels)}; give one word per label, in that order"
            )
        words = dict(zip(task.labels, label_words, strict=True))
    for label, word in words.items():
        if not isinstance(word, str) or not word.strip():
            raise BenchError(f"label word for label '{label}' of task '{task.name}' is empty; give a word")
    return words


def resolve_prompt(
    task: TaskSpec,
    template: str | None,
    label_words: tuple[str, ...] | dict[str, str] | None,
) -> tuple[str | None, list[str]]:
    """Resolve a run's template choice and label words against ``task``.

    ``template``: None = the task's default; a registered template name (`registry.TEMPLATES`);
    an LM-BFF template string (anything containing ``*``); or ``'none'`` for standard [CLS]
    inputs (returned as None). ``label_words``: a tuple in label order, a dict ``{label: word}``
    overriding some labels, or None. Without user words, a registered template's own words are
    used (if it has any), else the task's. Returns ``(template string or None, words in label
    order)``. Raises `BenchError` for an unknown name, a template without ``*mask*`` or with an
    unknown part, sentences or labels the task does not have, or bad label words.
    """
    template_words: dict[str, str] | None = None
    source = f"task '{task.name}'"
    if template is None:
        resolved: str | None = task.template
    elif template.strip().lower() == NO_TEMPLATE:
        resolved = None
    elif "*" in template:
        resolved = template
    else:
        register_task_templates()
        try:
            spec = registry.TEMPLATES.get(template)
        except BenchError as exc:
            raise BenchError(
                f"{exc}; or pass an LM-BFF template string such as '{_EXAMPLE_TEMPLATE}', or 'none' for "
                "standard [CLS] inputs"
            ) from None
        resolved = spec.template
        template_words = spec.label_words
        source = f"template '{spec.name}'"

    if resolved is not None:
        parts = parse_template(resolved)
        _check_template(
            resolved, parts, num_sentences=task.num_sentences, num_labels=task.num_labels, where=f"task '{task.name}'"
        )

    user = _label_words_dict(task, label_words) if label_words is not None else {}
    if len(user) == task.num_labels:
        words = user
    else:
        base = template_words if template_words else dict(task.label_words)
        if set(base) != set(task.labels):
            raise BenchError(
                f"{source} gives label words for labels {sorted(base)} but task '{task.name}' has labels "
                f"{list(task.labels)}; pass --label-words with one word per label"
            )
        words = {**base, **user}
    return resolved, [words[label] for label in task.labels]


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class EncodedExample:
    """One tokenized example, unpadded. The attention mask is all ones (see `attention_mask`)."""

    guid: str
    input_ids: list[int]
    token_type_ids: list[int] | None
    mask_pos: int | None
    label: int

    @property
    def attention_mask(self) -> list[int]:
        """1 for every token (padding is added per batch by `EncodedSplit.batches`)."""
        return [1] * len(self.input_ids)


class EncodedSplit:
    """A list of `EncodedExample` with their labels, batched and padded on demand."""

    def __init__(
        self,
        examples: Sequence[EncodedExample],
        *,
        pad_token_id: int,
        prompt_based: bool,
        use_token_type_ids: bool,
    ) -> None:
        self.examples: list[EncodedExample] = list(examples)
        self.pad_token_id = pad_token_id
        self.prompt_based = prompt_based
        self.use_token_type_ids = use_token_type_ids
        self.labels: torch.Tensor = torch.tensor([ex.label for ex in self.examples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> EncodedExample:
        return self.examples[index]

    def __iter__(self) -> Iterator[EncodedExample]:
        return iter(self.examples)

    @property
    def guids(self) -> list[str]:
        """The examples' guids, in order."""
        return [ex.guid for ex in self.examples]

    def subset(self, indices: Sequence[int] | torch.Tensor) -> EncodedSplit:
        """A new split holding the examples at ``indices`` (in that order)."""
        if isinstance(indices, torch.Tensor):
            indices = indices.tolist()
        return EncodedSplit(
            [self.examples[int(i)] for i in indices],
            pad_token_id=self.pad_token_id,
            prompt_based=self.prompt_based,
            use_token_type_ids=self.use_token_type_ids,
        )

    def collate(self, indices: Sequence[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Model inputs and labels for the examples at ``indices``, right-padded to the longest."""
        chosen = [self.examples[int(i)] for i in indices]
        width = max((len(ex.input_ids) for ex in chosen), default=0)
        input_ids = torch.full((len(chosen), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chosen), width), dtype=torch.long)
        token_type_ids = torch.zeros((len(chosen), width), dtype=torch.long) if self.use_token_type_ids else None
        for row, ex in enumerate(chosen):
            n = len(ex.input_ids)
            input_ids[row, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
            attention_mask[row, :n] = 1
            if token_type_ids is not None and ex.token_type_ids is not None:
                token_type_ids[row, :n] = torch.tensor(ex.token_type_ids, dtype=torch.long)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        if self.prompt_based:
            inputs["mask_pos"] = torch.tensor([ex.mask_pos for ex in chosen], dtype=torch.long)
        labels = torch.tensor([ex.label for ex in chosen], dtype=torch.long)
        return inputs, labels

    def batches(
        self, batch_size: int, *, shuffle_seed: int | None = None
    ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """Yield ``(model inputs, labels)`` batches of at most ``batch_size`` examples.

        Inputs: ``input_ids`` and ``attention_mask`` ``[B, L]`` (right-padded with the pad id to the
        longest in the batch), ``token_type_ids`` ``[B, L]`` when the backbone uses them, and
        ``mask_pos`` ``[B]`` for prompt-based inputs. With ``shuffle_seed`` the order is a permutation
        drawn from a `torch.Generator` seeded with it (the same seed gives the same batches).
        """
        if batch_size < 1:
            raise BenchError(f"batch size must be at least 1, got {batch_size}")
        n = len(self.examples)
        if shuffle_seed is None:
            order = list(range(n))
        else:
            generator = torch.Generator().manual_seed(shuffle_seed)
            order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n, batch_size):
            yield self.collate(order[start : start + batch_size])


class PromptEncoder:
    """Turns `Example`s into token ids with an LM-BFF template (or standard [CLS] inputs).

    ``template`` is an LM-BFF template string, or None for standard inputs
    ``[CLS] s0 [SEP] (s1 [SEP])``. ``label_words`` are in label order; their ids are in
    `label_word_ids` (empty when no words are given). ``max_seq_len`` caps the whole input (cut at
    the tail, or the head with ``truncate_head``); ``first_sent_limit`` / ``other_sent_limit`` cap
    the tokens of sentence 0 / other sentences inside a template (LM-BFF applies them to
    prompt-based inputs only). ``num_sentences``, when given, lets the template be checked up front.
    ``use_token_type_ids``: None = when the tokenizer's model takes them (BERT yes, RoBERTa no).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        template: str | None,
        label_words: Sequence[str],
        max_seq_len: int,
        first_sent_limit: int | None = None,
        other_sent_limit: int | None = None,
        truncate_head: bool = False,
        num_sentences: int | None = None,
        use_token_type_ids: bool | None = None,
    ) -> None:
        if max_seq_len < 1:
            raise BenchError(f"max_seq_len must be at least 1, got {max_seq_len}")
        for name, limit in (("first_sent_limit", first_sent_limit), ("other_sent_limit", other_sent_limit)):
            if limit is not None and limit < 0:
                raise BenchError(f"{name} must be non-negative, got {limit}")
        self.tokenizer = tokenizer
        self.template = template
        self.max_seq_len = max_seq_len
        self.first_sent_limit = first_sent_limit
        self.other_sent_limit = other_sent_limit
        self.truncate_head = truncate_head
        self.num_sentences = num_sentences
        self.prompt_based: bool = template is not None
        if use_token_type_ids is None:
            use_token_type_ids = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
        self.use_token_type_ids: bool = use_token_type_ids
        self.label_words: list[str] = list(label_words)
        self.label_word_ids: list[int] = [label_word_id(tokenizer, word) for word in self.label_words]
        seen: dict[int, str] = {}
        for word, token_id in zip(self.label_words, self.label_word_ids, strict=True):
            if token_id in seen:
                raise BenchError(
                    f"label words '{seen[token_id]}' and '{word}' are the same token for this tokenizer; "
                    "choose distinct words"
                )
            seen[token_id] = word

        self.parts: tuple[TemplatePart, ...] = ()
        self._literal_ids: dict[int, list[int]] = {}
        self._specials: dict[str, int] = {}
        self.truncated_count = 0
        if template is None:
            self._special_ids("cls", "sep")
        else:
            self.parts = parse_template(template)
            _check_template(
                template, self.parts, num_sentences=num_sentences, num_labels=None, where="the task"
            )
            for part in self.parts:
                if part.kind == "label" and part.index is not None and part.index >= len(self.label_words):
                    raise BenchError(
                        f"template '{template}' uses *label_{part.index}* but only {len(self.label_words)} "
                        "label words were given"
                    )
            self._special_ids(*{part.kind for part in self.parts if part.kind in _SPECIAL_PARTS})
            vocab = tokenizer.get_vocab() if any(len(p.text) == 1 for p in self.parts) else {}
            for position, part in enumerate(self.parts):
                if part.kind == "text":
                    self._literal_ids[position] = self._encode_literal(part.text, vocab)

    @classmethod
    def for_task(
        cls,
        tokenizer: Any,
        task: TaskSpec,
        *,
        template: str | None = None,
        label_words: tuple[str, ...] | dict[str, str] | None = None,
        max_seq_len: int | None = None,
        first_sent_limit: int | None = None,
        other_sent_limit: int | None = None,
        truncate_head: bool = False,
    ) -> PromptEncoder:
        """An encoder for ``task`` from a run's template choice (see `resolve_prompt`).

        Length settings default to the task's. For standard inputs (``template='none'``) no label
        words are kept, so a backbone need not have them as single tokens.
        """
        resolved, words = resolve_prompt(task, template, label_words)
        return cls(
            tokenizer,
            template=resolved,
            label_words=words if resolved is not None else [],
            max_seq_len=max_seq_len if max_seq_len is not None else task.max_seq_len,
            first_sent_limit=first_sent_limit if first_sent_limit is not None else task.first_sent_limit,
            other_sent_limit=other_sent_limit if other_sent_limit is not None else task.other_sent_limit,
            truncate_head=truncate_head,
            num_sentences=task.num_sentences,
        )

    # -- helpers ------------------------------------------------------------------------------

    def _special_ids(self, *kinds: str) -> None:
        for kind in kinds:
            attr = {"cls": "cls_token_id", "mask": "mask_token_id", "sep": "sep_token_id", "sep+": "sep_token_id"}[kind]
            token_id = getattr(self.tokenizer, attr, None)
            if token_id is None:
                what = f"*{kind}*" if self.prompt_based else "standard [CLS] inputs"
                raise BenchError(
                    f"tokenizer {type(self.tokenizer).__name__} has no {attr.removesuffix('_id')}, needed by {what}; "
                    "use a masked LM backbone (BERT / RoBERTa family)"
                )
            self._specials[kind] = int(token_id)

    def _enc(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _encode_literal(self, text: str, vocab: dict[str, int]) -> list[int]:
        # LM-BFF looks a one-character literal up in the vocabulary directly; we do the same when the
        # character is a vocabulary entry and tokenize it otherwise (LM-BFF would insert [UNK]).
        if len(text) == 1 and text in vocab:
            return [int(vocab[text])]
        return self._enc(text)

    def _sentence(self, example: Example, index: int) -> str:
        if index >= len(example.texts):
            raise BenchError(
                f"example '{example.guid}' has {len(example.texts)} sentence(s) but template '{self.template}' "
                f"uses sentence {index}; use a template for {len(example.texts)}-sentence inputs"
            )
        text = example.texts[index]
        return "" if text is None else str(text)

    # -- encoding -----------------------------------------------------------------------------

    def _tokens(self, example: Example) -> tuple[list[int], list[int], int | None, int]:
        """Untruncated ids, segment ids, mask position, and sentence-0 token count."""
        input_ids: list[int] = []
        segments: list[int] = []
        mask_pos: int | None = None
        sent0 = 0
        if not self.prompt_based:
            input_ids.append(self._specials["cls"])
            segments.append(0)
            for index, text in enumerate(example.texts):
                tokens = [*self._enc("" if text is None else str(text)), self._specials["sep"]]
                input_ids += tokens
                segments += [index] * len(tokens)
                if index == 0:
                    sent0 = len(tokens) - 1
            return input_ids, segments, None, sent0

        segment = 0
        for position, part in enumerate(self.parts):
            if part.kind == "text":
                tokens = self._literal_ids[position]
            elif part.kind == "sent":
                assert part.index is not None
                tokens = self._enc(part.apply(self._sentence(example, part.index)))
                limit = self.first_sent_limit if part.index == 0 else self.other_sent_limit
                if limit is not None:
                    tokens = tokens[:limit]
                if part.index == 0:
                    sent0 += len(tokens)
            elif part.kind == "label":
                assert part.index is not None
                tokens = [self.label_word_ids[part.index]]
            else:
                if part.kind == "mask":
                    mask_pos = len(input_ids)
                tokens = [self._specials[part.kind]]
            input_ids += tokens
            segments += [segment] * len(tokens)
            if part.kind == "sep+":
                segment += 1
        return input_ids, segments, mask_pos, sent0

    def encode(self, example: Example) -> EncodedExample:
        """Encode one example; raises `BenchError` if its mask falls beyond ``max_seq_len``."""
        input_ids, segments, mask_pos, sent0 = self._tokens(example)
        full_length = len(input_ids)
        if full_length > self.max_seq_len:
            self.truncated_count += 1
            if self.truncate_head:
                cut = full_length - self.max_seq_len
                input_ids, segments = input_ids[cut:], segments[cut:]
                if mask_pos is not None:
                    mask_pos -= cut
            else:
                input_ids, segments = input_ids[: self.max_seq_len], segments[: self.max_seq_len]
        if self.prompt_based and (mask_pos is None or not 0 <= mask_pos < len(input_ids)):
            room = self.max_seq_len - (full_length - sent0)
            hint = f"first_sent_limit={room}" if room > 0 else "first_sent_limit / other_sent_limit"
            raise BenchError(
                f"example '{example.guid}': the *mask* was truncated away ({full_length} tokens > "
                f"max_seq_len={self.max_seq_len}, truncate_head={self.truncate_head}); set {hint} or a larger "
                "max_seq_len"
            )
        return EncodedExample(
            guid=example.guid,
            input_ids=input_ids,
            token_type_ids=segments if self.use_token_type_ids else None,
            mask_pos=mask_pos if self.prompt_based else None,
            label=int(example.label),
        )

    def encode_all(self, examples: Sequence[Example]) -> EncodedSplit:
        """Encode a list of examples into an `EncodedSplit`."""
        before = self.truncated_count
        encoded = [self.encode(example) for example in examples]
        if self.truncated_count > before:
            logger.warning(
                "%d of %d inputs exceeded max_seq_len=%d and were truncated (first_sent_limit=%s, other_sent_limit=%s)",
                self.truncated_count - before, len(encoded), self.max_seq_len, self.first_sent_limit,
                self.other_sent_limit,
            )
        return EncodedSplit(
            encoded,
            pad_token_id=self.pad_token_id,
            prompt_based=self.prompt_based,
            use_token_type_ids=self.use_token_type_ids,
        )

    @property
    def pad_token_id(self) -> int:
        """The id used for padding (the tokenizer's pad token, else 0)."""
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return int(pad) if pad is not None else 0

    def render(self, example: Example) -> str:
        """The encoded example as text (special tokens kept), e.g. for ``bench data``."""
        return str(self.tokenizer.decode(self.encode(example).input_ids, skip_special_tokens=False))

    def __repr__(self) -> str:
        return (
            f"PromptEncoder(template={self.template!r}, label_words={self.label_words}, "
            f"max_seq_len={self.max_seq_len}, first_sent_limit={self.first_sent_limit}, "
            f"other_sent_limit={self.other_sent_limit}, truncate_head={self.truncate_head})"
        )
