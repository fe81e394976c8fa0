"""The DeepSpeed worker: one process per rank, started by the DeepSpeed launcher (``--module runners.worker``).

It joins the process group, resolves the run (its hash must be the parent's: the same inputs),
attaches rank 0 to the parent's MLflow run (other ranks log nothing), runs `benchmark.run.execute`
with a `Distribution` of its rank, the world size and DeepSpeed's stepper
(`runners.deepspeed_stepper`), and leaves closing the run to the parent. Rank 0 writes the
method's result to ``--result`` for the parent; a rank that fails writes its error next to it
(``<result>.error-rank<N>``).
Exit codes: 0 done, 2 user error (`BenchError`), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from benchmark.config import RunConfig
from registry import BenchError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The worker's arguments (the launcher appends ``--local_rank``)."""
    parser = argparse.ArgumentParser(prog="runners.worker", description=__doc__)
    parser.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", "0")))
    parser.add_argument("--config", required=True, help="the run's canonical RunConfig as base64 JSON")
    parser.add_argument("--config-hash", default=None, help="the run's config hash as the parent resolved it")
    parser.add_argument("--run-id", required=True, help="the MLflow run rank 0 logs into")
    parser.add_argument("--deepspeed-config", required=True, help="the DeepSpeed config as base64 JSON")
    parser.add_argument("--result", type=Path, default=None, help="where rank 0 writes the result JSON")
    return parser.parse_args(argv)


def _write(path: Path | None, payload: dict[str, Any]) -> None:
    if path is not None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, default=str))
        tmp.replace(path)


def error_path(result: Path | None, rank: int) -> Path | None:
    """Where rank ``rank`` reports its error (every rank writes its own file before exiting: when one
    rank fails, the launcher kills the others, possibly before rank 0 could say why)."""
    return None if result is None else result.with_name(f"{result.name}.error-rank{rank}")


def main(argv: list[str] | None = None) -> int:
    """Run this rank's share of the run; returns the process exit code."""
    from benchmark.quiet import quiet_libraries
    from runners.deepspeed import decode

    # No model-loading bars or library INFO lines from any rank; of the suite's own bars, only rank 0's
    # training bar is shown (the others are off on ranks > 0, or off because the launcher's pipe is no TTY).
    quiet_libraries()

    args = parse_args(argv)
    config = RunConfig.model_validate(decode(args.config))
    ds_config = decode(args.deepspeed_config)

    import deepspeed
    import torch

    on_cpu = config.device == "cpu" or not torch.cuda.is_available()
    if not on_cpu:
        torch.cuda.set_device(args.local_rank)
    deepspeed.init_distributed(dist_backend="gloo" if on_cpu else None)
    rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()

    from benchmark.resolve import resolve_run
    from benchmark.run import execute
    from benchmark.tracking import NullTracker, Tracker
    from runners.deepspeed_stepper import deepspeed_distribution

    tracker = Tracker.attach(tracking_uri=config.tracking_uri, run_id=args.run_id) if rank == 0 else NullTracker()
    code = 0
    try:
        run = resolve_run(config, check_tokenizer=False)  # the parent checked the prompt already
        if args.config_hash is not None and run.config_hash() != args.config_hash:
            raise BenchError(f"rank {rank} resolved the run to config hash {run.config_hash()}, the launcher to "
                             f"{args.config_hash}: its model or data differ on this node; give every node the same")
        outcome = execute(run, tracker=tracker, finish=False,
                          distribution=deepspeed_distribution(ds_config, rank=rank, world_size=world_size))
        if rank == 0:
            result = outcome.result
            _write(args.result, {"metrics": result.metrics, "predictions": result.predictions,
                                 "params": result.params, "seconds": outcome.seconds})
    except BenchError as exc:
        print(f"error (rank {rank}): {exc}", file=sys.stderr, flush=True)
        _write(error_path(args.result, rank), {"error": str(exc)})
        code = 2
    except Exception as exc:
        traceback.print_exc()
        _write(error_path(args.result, rank), {"error": f"worker rank {rank} failed: {type(exc).__name__}: {exc}"})
        code = 1
    finally:
        if torch.distributed.is_initialized() and code == 0:
            torch.distributed.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
