"""Stage ``pretrain_captioner``: train the tiny BLIP captioner from scratch on the shapes still-image corpus.

Reads params ``pretrain_captioner`` and the stills corpus (``train.parquet``, ``val.parquet``). Writes the
model (``save_pretrained`` model + processor, loadable by ``load_captioner(<out>)`` like a hub model) and
metrics (held-out exact match and per-attribute accuracy, steps, seconds).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import typer
from PIL import Image

from discovla.artifacts.metrics import write_metrics
from discovla.captioner import Captioner, load_captioner
from discovla.config import load_params_or_exit
from discovla.errors import run_stage
from discovla.images import decode_png
from discovla.text import CaptionsError
from discovla.tiny_blip import evaluate_captioner, pretrain_tiny_captioner


def _read_stills(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise CaptionsError(f"{path} not found (run the shapes stage first)")
    return pd.read_parquet(path, columns=["image", "caption"])


def _check_reload(out: Path, captioner: Captioner, probe: list[Image.Image]) -> None:
    """The saved directory, loaded like any hub model, must caption exactly like the trained model."""
    reloaded = load_captioner(str(out), captioner.device)
    n = captioner.max_new_tokens_limit
    if reloaded.caption(probe, 32, n, progress=False) != captioner.caption(probe, 32, n, progress=False):
        raise CaptionsError(f"{out}: the saved captioner does not reproduce the trained one")


def main(
    stills: Path = typer.Option(..., help="Stills corpus directory (shapes stage)."),
    out: Path = typer.Option(..., help="Directory for the trained captioner."),
    metrics: Path = typer.Option(..., help="Pretraining metrics JSON."),
    info: Path = typer.Option(..., help="Run information JSON: timings, speeds, device (not a DVC metric)."),
) -> None:
    params = load_params_or_exit()
    p = params.pretrain_captioner
    train, val = _read_stills(stills / "train.parquet"), _read_stills(stills / "val.parquet")
    captioner, stats = pretrain_tiny_captioner(
        train.image.tolist(),
        train.caption.tolist(),
        out,
        seed=p.seed,
        epochs=p.epochs,
        batch_size=p.batch_size,
        lr=p.lr,
        weight_decay=p.weight_decay,
    )
    val_metrics = evaluate_captioner(captioner, val.image.tolist(), val.caption.tolist())
    _check_reload(out, captioner, [Image.fromarray(decode_png(b)) for b in val.image.tolist()[:32]])
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    examples = val_metrics.pop("examples")
    record = {**val_metrics, "size_bytes": size, "train_images": len(train), "train": stats}
    write_metrics(metrics, info, record)
    for ex in examples[:3]:
        print(f"  truth:     {ex['truth']}\n  predicted: {ex['predicted']}")
    print(
        f"pretrain_captioner: {stats['steps']} steps in {stats['seconds']:.0f} s "
        f"(loss {stats['final_loss']:.3f}), val exact match {val_metrics['exact_match']:.3f}, "
        f"{out} {size / 1e6:.1f} MB"
    )


if __name__ == "__main__":
    run_stage(main)
