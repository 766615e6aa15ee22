"""Run by tests/test_train.py under torchrun (or plainly): train on synthetic features, save adapters."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import synthetic_features  # noqa: E402

from discovla.artifacts.adapters import save_adapters  # noqa: E402
from discovla.backbone import load_backbone  # noqa: E402
from discovla.model import DiscoVLAConfig  # noqa: E402
from discovla.train import TrainConfig, train  # noqa: E402


def main(out: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    clip = load_backbone("tiny-clip", None, context_length=32).model
    cfg = TrainConfig(
        seed=5,
        epochs=1,
        batch_size=8,
        # Adam with eps >> |grad| is plain SGD: sensitive to the gradient's scale, which Adam would hide
        lr=0.5,
        eps=1.0,
        weight_decay=0.0,
        grad_clip=0.0,
        warmup=0.0,
        device="cpu",
        model=DiscoVLAConfig(lora_rank=4, vision_layers=2, text_layers=1, adapter_dim=4, num_frames=4),
    )
    model, _ = train(clip, synthetic_features(), cfg, Path(out) / "ckpt", progress=False)
    if int(os.environ.get("RANK", "0")) == 0:
        save_adapters(Path(out) / "adapters", model, {})


if __name__ == "__main__":
    main(sys.argv[1])
