"""Named templates (`registry.TEMPLATES`) and a run's template and label-word choice resolved against a task."""

from __future__ import annotations

import registry
from benchmark.config import NO_TEMPLATE
from benchmark.prompts.templates import _EXAMPLE_TEMPLATE, _check_template, parse_template
from registry import BenchError, TaskSpec, TemplateSpec

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
