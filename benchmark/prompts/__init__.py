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

Modules: `benchmark.prompts.templates` (parsing), `benchmark.prompts.resolution` (named templates and a
run's choice), `benchmark.prompts.label_words` (label word ids), `benchmark.prompts.encoder` (the
encoder) and `benchmark.prompts.encoded` (encoded splits and batches).
"""

from benchmark.prompts.encoded import EncodedExample, EncodedSplit
from benchmark.prompts.encoder import PromptEncoder
from benchmark.prompts.label_words import label_word_id
from benchmark.prompts.resolution import register_task_templates, resolve_prompt
from benchmark.prompts.templates import TemplatePart, parse_template

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
