"""Stage `pretrain_captioner`: train the tiny BLIP captioner from scratch on the shapes still-image corpus.

Reads params `pretrain_captioner` and `data/shapes/stills/{train,val}.parquet`; writes `models/tiny-blip/`
(``save_pretrained`` model + processor, loadable by ``load_captioner("models/tiny-blip")``) and
`metrics/pretrain_captioner.json` (held-out exact match and per-attribute accuracy, steps, seconds).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from discovla.captioner import (
    Captioner,
    CaptionsError,
    decode_png,
    evaluate_captioner,
    load_captioner,
    pretrain_tiny_captioner,
)
from discovla.config import load_params_or_exit
from discovla.errors import run_stage
from discovla.io import write_json

STILLS = Path("data/shapes/stills")
OUT = Path("models/tiny-blip")
METRICS = Path("metrics/pretrain_captioner.json")


def _read_stills(split: str) -> pd.DataFrame:
    path = STILLS / f"{split}.parquet"
    if not path.exists():
        raise CaptionsError(f"{path} not found (run the shapes stage first)")
    return pd.read_parquet(path, columns=["image", "caption"])


def _check_reload(captioner: Captioner, probe: list) -> None:
    """The saved directory, loaded like any hub model, must caption exactly like the trained model."""
    reloaded = load_captioner(str(OUT), captioner.device)
    n = captioner.max_new_tokens_limit
    if reloaded.caption(probe, 32, n, progress=False) != captioner.caption(probe, 32, n, progress=False):
        raise CaptionsError(f"{OUT}: the saved captioner does not reproduce the trained one")


def main() -> None:
    params = load_params_or_exit()
    p = params.pretrain_captioner
    train, val = _read_stills("train"), _read_stills("val")
    captioner, stats = pretrain_tiny_captioner(
        train.image.tolist(),
        train.caption.tolist(),
        OUT,
        seed=p.seed,
        epochs=p.epochs,
        batch_size=p.batch_size,
        lr=p.lr,
        weight_decay=p.weight_decay,
    )
    val_metrics = evaluate_captioner(captioner, val.image.tolist(), val.caption.tolist())
    _check_reload(captioner, [decode_png(b) for b in val.image.tolist()[:32]])
    size = sum(f.stat().st_size for f in OUT.iterdir() if f.is_file())
    examples = val_metrics.pop("examples")
    write_json(METRICS, {**val_metrics, "size_bytes": size, "train_images": len(train), "train": stats})
    for ex in examples[:3]:
        print(f"  truth:     {ex['truth']}\n  predicted: {ex['predicted']}")
    print(
        f"pretrain_captioner: {stats['steps']} steps in {stats['seconds']:.0f} s "
        f"(loss {stats['final_loss']:.3f}), "
        f"val exact match {val_metrics['exact_match']:.3f}, {OUT} {size / 1e6:.1f} MB"
    )


if __name__ == "__main__":
    run_stage(main)
