"""`PromptEncoder`: examples to token ids with an LM-BFF template, as LM-BFF's ``tokenize_multipart_input``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from benchmark.examples import Example
from benchmark.prompts.encoded import EncodedExample, EncodedSplit
from benchmark.prompts.label_words import label_word_id
from benchmark.prompts.resolution import resolve_prompt
from benchmark.prompts.templates import _SPECIAL_PARTS, TemplatePart, _check_template, parse_template
from registry import BenchError, TaskSpec

logger = logging.getLogger(__name__)


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
