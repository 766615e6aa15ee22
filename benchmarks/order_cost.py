"""Benchmark: what the order-aware extension costs per training step, DiscoVLA and order-aware interleaved.

    python benchmarks/order_cost.py                       # tiny CLIP, batch 32 x 8 frames, 3 rounds
    python benchmarks/order_cost.py --variant trend --out benchmarks/results/order_cost_trend.json

``benchmarks/train_step.py`` times its configurations one after another, so a slow minute of a shared
machine lands on one of them. Here the two configurations alternate, ``--rounds`` times each (the order of
the pair flips every round), with :func:`train_step.measure_step`: full DiscoVLA, and the same with
``temporal.module`` and L_order over a reversed and a shuffled copy of every video (``--variant module``),
or with time-trend pooling (``temporal.trends: 1``) and L_order over the reversed copy (``--variant
trend``, the ``order_trend`` ablation rows). Reported: each
round's s/step, the medians and their ratio. Writes ``benchmarks/results/order_cost.json``.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

import torch
import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_step import device_name, measure_step  # noqa: E402

from discovla.io import write_json  # noqa: E402


def main(
    backbone: str = typer.Option("tiny-clip", help="open_clip model or a discovla/configs name."),
    batch: int = typer.Option(32, help="Videos per step."),
    frames: int = typer.Option(8, help="Frames per video."),
    rounds: int = typer.Option(3, help="Rounds; each times both configurations."),
    steps: int = typer.Option(8, help="Timed steps per configuration and round."),
    warmup: int = typer.Option(2, help="Untimed steps first."),
    out: Path = typer.Option(Path("benchmarks/results/order_cost.json"), help="Results JSON."),
    variant: str = typer.Option(
        "module",
        help="module: temporal module + L_order (reversed, shuffled); "
        "trend: time-trend pooling + L_order (reversed).",
    ),
) -> None:
    """Time DiscoVLA and order-aware DiscoVLA steps, interleaved, and write the medians."""
    if variant not in ("module", "trend"):
        raise typer.BadParameter(f"--variant must be module or trend, got {variant!r}")
    extension = {"order": True} if variant == "module" else {"trends": 1}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs: dict[str, list[float]] = {"discovla": [], "order_aware": []}
    for r in range(rounds):
        pair = [("discovla", {}), ("order_aware", extension)]
        for name, ext in pair if r % 2 == 0 else pair[::-1]:
            m = measure_step(
                backbone=backbone,
                batch=batch,
                frames=frames,
                device=device,
                steps=steps,
                warmup=warmup,
                fusion=True,
                **ext,
            )
            runs[name].append(round(m["s_per_step"], 4))
            print(f"round {r + 1}: {name} {m['s_per_step']:.4f} s/step", file=sys.stderr, flush=True)
    medians = {k: statistics.median(v) for k, v in runs.items()}
    write_json(
        out,
        {
            "command": "python benchmarks/order_cost.py " + " ".join(sys.argv[1:]),
            "device": device_name(device),
            "load_avg": [round(x, 2) for x in os.getloadavg()],
            "backbone": backbone,
            "variant": variant,
            "batch": batch,
            "frames": frames,
            "steps": steps,
            "s_per_step": runs,
            "median_s_per_step": medians,
            "order_aware_over_discovla": round(medians["order_aware"] / medians["discovla"], 3),
        },
    )
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    typer.run(main)
