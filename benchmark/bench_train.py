"""Training throughput: our loop (`benchmark.training.train_model`) against a plain transformers loop.

Both train the same masked LM (prompt-based: cross-entropy on the label words' logits at the mask)
on the same batches, with AdamW, a linear schedule, gradient clipping and dropout on. The plain
loop is what one writes with transformers alone: ``DataCollatorWithPadding`` batches,
``AutoModelForMaskedLM`` forward, gather at the mask, ``get_linear_schedule_with_warmup``.
Rounds alternate between the loops (the machine may be shared); the median steps/s of each and
the ratios are printed (target: ours / plain >= 0.9), by wall clock and by this process's CPU
time (steadier on a loaded machine; meaningful with ``--threads 1``)::

    python -m benchmark.bench_train --model ../shared/models/bert-tiny-splade --steps 60 --threads 1

The honest baseline is the plain loop that scores only the mask position (``plain-mask``; target:
ours / plain-mask >= 0.95); a loop scoring the whole vocabulary at every position flatters ours.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time
from pathlib import Path

import torch

TEMPLATE = "*cls**sent_0*_It_was*mask*.*sep+*"


def _examples(tokenizer, n: int, words: int, seed: int):
    from benchmark.examples import Example

    rng = random.Random(seed)
    vocab = [t for t in tokenizer.get_vocab() if t.isalpha() and t.islower() and len(t) > 2][:5000]
    return [Example(guid=str(i), texts=(" ".join(rng.choice(vocab) for _ in range(rng.randint(words // 2, words))),),
                    label=i % 2) for i in range(n)]


def _load(model_dir: Path | None):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    if model_dir is None:
        import tempfile

        from tests import tiny

        directory = Path(tempfile.mkdtemp(prefix="bench-train-"))
        tokenizer = tiny.bert_tokenizer(directory)
        return tiny.bert_mlm(tokenizer), tokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return AutoModelForMaskedLM.from_pretrained(model_dir, attn_implementation="eager"), tokenizer


def ours(mlm, encoder, train, dev, *, batch_size: int, steps: int, seed: int) -> tuple[float, float]:
    """(wall, CPU) steps/s of `train_model`; wall excludes the final evaluation, CPU time includes it."""
    from benchmark.models import PromptLogitModel
    from benchmark.training import TrainingOptions, train_model

    model = PromptLogitModel(copy.deepcopy(mlm), encoder.label_word_ids)
    options = TrainingOptions(lr=1e-5, batch_size=batch_size, steps=steps, eval_every=steps)
    cpu = time.process_time()
    result = train_model(model, train, dev, options, optimizer="adam", seed=seed, device=torch.device("cpu"))
    return result.steps_per_second, steps / (time.process_time() - cpu)


def plain(
    mlm, tokenizer, train, label_word_ids: list[int], *, batch_size: int, steps: int, seed: int, mask_only: bool = False
) -> tuple[float, float]:
    """Steps/s of a hand-written transformers loop on the same data and batch order.

    By default the masked LM scores every position (``model(**batch).logits``), as one would write it;
    with ``mask_only`` the MLM head runs on the mask positions only, as our logit model does.
    """
    from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup

    from benchmark.training import epoch_batches

    model = copy.deepcopy(mlm).train()
    head = next(module for _, module in model.named_children() if module is not model.base_model)
    collator = DataCollatorWithPadding(tokenizer)
    features = [{"input_ids": ex.input_ids, "token_type_ids": ex.token_type_ids or [0] * len(ex.input_ids)}
                for ex in train]
    masks = torch.tensor([ex.mask_pos for ex in train])
    labels = torch.tensor([ex.label for ex in train])
    words = torch.tensor(label_word_ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, steps)
    batches = epoch_batches(len(train), batch_size, seed)
    torch.manual_seed(seed)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        index = next(batches)
        batch = collator([features[i] for i in index])
        rows = torch.arange(len(index))
        if mask_only:
            hidden = model.base_model(**batch)[0][rows, masks[index]]
            at_mask = head(hidden)[:, words]
        else:
            at_mask = model(**batch).logits[rows, masks[index]][:, words]
        loss = torch.nn.functional.cross_entropy(at_mask, labels[index])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return steps / (time.perf_counter() - start), steps / (time.process_time() - cpu)


def main(argv: list[str] | None = None) -> None:
    """Print steps/s of both loops and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="masked LM directory (default: a tiny random BERT built from a config)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--words", type=int, default=40, help="max words per sentence")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from benchmark.prompts import PromptEncoder

    mlm, tokenizer = _load(args.model)
    encoder = PromptEncoder(tokenizer, template=TEMPLATE, label_words=["terrible", "great"], max_seq_len=128)
    train = encoder.encode_all(_examples(tokenizer, 64, args.words, args.seed))
    dev = train.subset([0])
    ours(mlm, encoder, train, dev, batch_size=args.batch_size, steps=5, seed=args.seed)  # warm-up
    plain(mlm, tokenizer, train, encoder.label_word_ids, batch_size=args.batch_size, steps=5, seed=args.seed)
    loops = {
        "ours": ("ours (train_model)", lambda: ours(mlm, encoder, train, dev, **common)),
        "plain": ("plain transformers loop", lambda: plain(mlm, tokenizer, train, encoder.label_word_ids, **common)),
        "plain-mask": ("plain loop, MLM head at mask only",
                       lambda: plain(mlm, tokenizer, train, encoder.label_word_ids, mask_only=True, **common)),
    }
    common = {"batch_size": args.batch_size, "steps": args.steps, "seed": args.seed}
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name, (_, run) in loops.items():
            rates[name].append(run())
    print(f"model: {args.model or 'tiny random BERT'}  batch: {args.batch_size}  steps/round: {args.steps}  "
          f"rounds: {args.rounds}  threads: {torch.get_num_threads()}")
    median = {}
    for clock, index in (("wall", 0), ("cpu", 1)):
        median[clock] = {name: statistics.median(r[index] for r in values) for name, values in rates.items()}
        for name, (label, _) in loops.items():
            per_round = [round(r[index], 2) for r in rates[name]]
            print(f"[{clock:4s}] {label:34s} {median[clock][name]:8.2f} steps/s  {per_round}")
    for clock in ("wall", "cpu"):
        m = median[clock]
        print(f"[{clock:4s}] ratio ours / plain: {m['ours'] / m['plain']:.3f} (target >= 0.9);  "
              f"ours / plain with mask-only head: {m['ours'] / m['plain-mask']:.3f} (target >= 0.95)")

if __name__ == "__main__":
    main()
