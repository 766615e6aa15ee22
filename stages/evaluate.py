"""Stage `evaluate`: zero-shot baseline and trained DiscoVLA on the test split (last epoch, no selection)."""

from __future__ import annotations

import torch

from discovla.backbone import load_backbone
from discovla.config import load_params_or_exit
from discovla.errors import run_stage
from discovla.evaluate import evaluate_model, zeroshot
from discovla.features import load_features
from discovla.io import atomic_path, write_json
from discovla.train import load_adapters

KS = (1, 2, 3, 5, 10, 20, 50)


def recall_curve(results: dict[str, dict]) -> str:
    """CSV with one row per K and one column per (model, direction), for `dvc plots`."""
    from discovla.retrieval import recall_at

    cols = [f"{m}_{d}" for m in results for d in ("t2v", "v2t")]
    lines = ["k," + ",".join(cols)]
    for k in KS:
        vals = [f"{recall_at(results[m][d], k):.3f}" for m in results for d in ("t2v", "v2t")]
        lines.append(f"{k}," + ",".join(vals))
    return "\n".join(lines) + "\n"


def main() -> None:
    params = load_params_or_exit()
    ev = params.evaluate
    features = load_features("data/features")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    zs = zeroshot(features, "test", ev.chunk_size, ev.dsl)
    backbone = load_backbone(
        params.model.backbone,
        params.model.pretrained,
        device=device,
        context_length=params.model.context_length,
    )
    model = load_adapters("models/discovla", backbone.model, device=device)
    trained = evaluate_model(model, features, "test", ev.batch_size, ev.chunk_size, ev.dsl, device=device)
    ranks = {"zeroshot": zs.pop("ranks"), "discovla": trained.pop("ranks")}
    write_json("metrics/zeroshot.json", zs)
    write_json("metrics/retrieval.json", {**trained, "zeroshot": {k: zs[k] for k in ("t2v", "v2t", "twins")}})
    with atomic_path("metrics/recall_at_k.csv") as tmp:
        tmp.write_text(recall_curve(ranks))
    for name, m in (("zero-shot", zs), ("DiscoVLA", trained)):
        tw = ", ".join(f"{k} twins {v:.1f}%" for k, v in m.get("twins", {}).items())
        print(f"{name}: t2v R@1 {m['t2v']['R@1']:.1f}, v2t R@1 {m['v2t']['R@1']:.1f}; {tw}")


if __name__ == "__main__":
    run_stage(main)
