"""Run by tests/test_resume.py under torchrun or plainly: train synthetic features as the train stage does
(checkpoint root from ``$DISCOVLA_CHECKPOINTS``, outputs by rank 0 after every rank finished).

    resume_train.py OUT [--stop-after-epoch N] [--fail-rank R] [--per-rank-roots]

``--per-rank-roots``: rank R uses ``$DISCOVLA_CHECKPOINTS/rankR`` (nodes without a shared disk).
``--fail-rank R``: rank R dies after training, before the final collective (a node lost at the end).
Every rank writes ``OUT/rankR.json`` (its record's resume epoch and key) and ``OUT/rankR.safetensors``
(its trainable tensors); rank 0 writes the adapters to ``OUT/adapters``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import synthetic_features, tiny_train_config  # noqa: E402

from discovla.artifacts.adapters import CHECKPOINTS_ENV, checkpoint_root, save_adapters  # noqa: E402
from discovla.artifacts.features import Features  # noqa: E402
from discovla.backbone import load_backbone  # noqa: E402
from discovla.distributed import all_ranks_finished  # noqa: E402
from discovla.io import write_json  # noqa: E402
from discovla.train import train  # noqa: E402

CFG = tiny_train_config()


def make_inputs() -> tuple[torch.nn.Module, Features]:
    """The tiny CLIP and the synthetic features, the same in every process: the features' embeddings draw
    from torch's global generator, so they are made right after the seeded CLIP."""
    torch.manual_seed(0)
    clip = load_backbone("tiny-clip", None, context_length=32).model
    return clip, synthetic_features()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--stop-after-epoch", type=int, default=None)
    ap.add_argument("--fail-rank", type=int, default=None)
    ap.add_argument("--per-rank-roots", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    if args.per_rank_roots:
        os.environ[CHECKPOINTS_ENV] = f"{os.environ[CHECKPOINTS_ENV]}/rank{rank}"
    clip, features = make_inputs()
    model, record = train(clip, features, CFG, checkpoint_root(), args.stop_after_epoch, progress=False)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(
        args.out / f"rank{rank}.json", {k: record[k] for k in ("resumed_from_epoch", "checkpoint_key")}
    )
    save_file(
        {k: v.contiguous() for k, v in model.adapter_state_dict().items()},
        str(args.out / f"rank{rank}.safetensors"),
    )
    if rank == args.fail_rank:
        raise SystemExit(f"rank {rank} fails on purpose")
    all_ranks_finished()
    if rank == 0:
        save_adapters(args.out / "adapters", model, {})


if __name__ == "__main__":
    main()
