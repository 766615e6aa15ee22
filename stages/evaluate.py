"""Stage ``evaluate``: zero-shot baseline and trained DiscoVLA on the test split (last epoch, no selection).

Reads params ``model`` and ``evaluate``, the feature cache and the trained adapters.
"""

from __future__ import annotations

from pathlib import Path

import typer

from discovla.artifacts.adapters import load_adapters
from discovla.artifacts.features import load_features
from discovla.artifacts.metrics import write_recall_curve
from discovla.backbone import load_backbone
from discovla.config import load_params_or_exit
from discovla.errors import run_stage
from discovla.evaluate import evaluate_model, zeroshot
from discovla.io import write_json
from discovla.runtime import resolve_device


def main(
    features: Path = typer.Option(..., help="Feature cache (features stage)."),
    adapters: Path = typer.Option(..., help="Trained adapters (train stage)."),
    metrics: Path = typer.Option(..., help="Retrieval metrics JSON of the trained model."),
    zeroshot_metrics: Path = typer.Option(..., "--zeroshot", help="Zero-shot baseline metrics JSON."),
    curve: Path = typer.Option(..., help="Recall@K curve CSV."),
) -> None:
    params = load_params_or_exit()
    ev, m = params.evaluate, params.model
    cache = load_features(features)
    device = str(resolve_device("auto"))
    zs = zeroshot(cache, "test", ev.chunk_size, ev.dsl)
    backbone = load_backbone(m.backbone, m.pretrained, device=device, context_length=m.context_length)
    model = load_adapters(adapters, backbone.model, device=device)
    trained = evaluate_model(model, cache, "test", ev.batch_size, ev.chunk_size, ev.dsl, device, ev.workers)
    ranks = {"zeroshot": zs.pop("ranks"), "discovla": trained.pop("ranks")}
    write_json(zeroshot_metrics, zs)
    write_json(metrics, {**trained, "zeroshot": {k: zs[k] for k in ("t2v", "v2t", "twins", "reversal")}})
    write_recall_curve(curve, ranks)
    for name, r in (("zero-shot", zs), ("DiscoVLA", trained)):
        tw = ", ".join(f"{k} twins {v:.1f}%" for k, v in r.get("twins", {}).items())
        rev = r["reversal"]
        ordered = f", {rev['ordered']:.1f}% on order-stating captions" if rev["ordered"] is not None else ""
        print(
            f"{name}: t2v R@1 {r['t2v']['R@1']:.1f}, v2t R@1 {r['v2t']['R@1']:.1f}; {tw}; "
            f"reversal test {rev['all']:.1f}%{ordered}"
        )


if __name__ == "__main__":
    run_stage(main)
