"""Design search for the order-aware rows, on the val split (never the test split): one seed per candidate.

    python benchmarks/order_search.py --epochs 8 --workers 6

Each candidate is the params file's full DiscoVLA with a few settings changed (``CANDIDATES``: the temporal
module, time-trend pooling, L_order's weight, shuffled copies, frame positions in IVFusion, a longer
schedule). Every candidate trains one seed on the train split and is evaluated on the val split: t2v R@1
and R@5 and the reversal test (all captions and order-stating ones), with val R@1 and L_order per epoch.
Which settings become ablation rows is decided from these val numbers; the rows' test numbers come from
``discovla ablate`` alone. Runs share the checkpoint root (``$DISCOVLA_CHECKPOINTS`` or
``.work/checkpoints``), so a search stopped halfway resumes, and a result is written to ``--out`` as each
candidate finishes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import typer

from discovla.artifacts.features import Features, load_features
from discovla.config import Params, load_params
from discovla.io import read_json, write_json

# name -> params sections to change (deep-merged into the params file)
CANDIDATES: dict[str, dict[str, Any]] = {
    "faithful": {},
    "module_w10": {"temporal": {"module": True, "order_weight": 10.0}},
    "trend_w3": {"temporal": {"trends": 1, "order_weight": 3.0}},
    "trend_w10": {"temporal": {"trends": 1, "order_weight": 10.0}},
    "trend_w30": {"temporal": {"trends": 1, "order_weight": 30.0}},
    "trend2_w10": {"temporal": {"trends": 2, "order_weight": 10.0}},
    "trend_module_w10": {"temporal": {"module": True, "trends": 1, "order_weight": 10.0}},
    "trend_module_w30": {"temporal": {"module": True, "trends": 1, "order_weight": 30.0}},
    "trend_shuffled_w10": {"temporal": {"trends": 1, "order_weight": 10.0, "shuffled": True}},
    "trend_tokens_w10": {
        "temporal": {"trends": 1, "order_weight": 10.0},
        "fusion": {"temporal_position": True},
    },
    "trend_w10_x3": {"temporal": {"trends": 1, "order_weight": 10.0}, "epochs_factor": 3},
}


def candidate_params(params: Params, changes: dict[str, Any], epochs: int) -> Params:
    """The params file with one candidate's changes merged in, training ``epochs`` (times the candidate's
    ``epochs_factor``)."""
    data = params.model_dump()
    changes = dict(changes)
    factor = int(changes.pop("epochs_factor", 1))
    for section, values in changes.items():
        data[section].update(values)
    data["train"]["epochs"] = epochs * factor
    return Params.model_validate(data)


def run_candidate(
    params: Params,
    features: Features,
    changes: dict[str, Any],
    epochs: int,
    seed: int,
    root: Path,
    clip_factory: Callable[[], torch.nn.Module] | None = None,
) -> dict[str, Any]:
    """Train one candidate (one seed) and evaluate it on the val split. ``clip_factory`` returns a fresh
    frozen CLIP (default: the params' backbone)."""
    from discovla.ablation import device_label
    from discovla.backbone import load_backbone
    from discovla.evaluate import evaluate_model, validation_monitor
    from discovla.pipeline import train_config
    from discovla.train import train

    p = candidate_params(params, changes, epochs)
    cfg = train_config(p, features.num_frames, seed=seed)
    ev, m = p.evaluate, p.model
    if clip_factory is None:
        clip = load_backbone(m.backbone, m.pretrained, context_length=m.context_length).model
    else:
        clip = clip_factory()
    t0 = time.perf_counter()
    monitor = validation_monitor(features, ev.batch_size, ev.chunk_size)
    model, record = train(clip, features, cfg, root, on_epoch=monitor, progress=False)
    device = next(iter(model.trainable_parameters())).device
    res = evaluate_model(model, features, "val", ev.batch_size, ev.chunk_size, dsl=False, device=str(device))
    rev = res.get("reversal") or {}
    return {
        "changes": changes,
        "epochs": cfg.epochs,
        "seed": seed,
        "val_t2v_R@1": res["t2v"]["R@1"],
        "val_t2v_R@5": res["t2v"]["R@5"],
        "val_reversal_acc": rev.get("all"),
        "val_reversal_ordered_acc": rev.get("ordered"),
        "val_order_twin_acc": res.get("twins", {}).get("order"),
        "per_epoch": [
            {k: e.get(k) for k in ("epoch", "val_t2v_R@1", "order", "video")} for e in record["epochs"]
        ],
        "checkpoint_key": record["checkpoint_key"],
        "resumed_from_epoch": record["resumed_from_epoch"],
        "seconds": round(time.perf_counter() - t0, 1),
        "device": device_label(device),
    }


_WORKER: dict[str, Any] = {}


def _init(params_file: str, features_dir: str) -> None:
    torch.set_num_threads(1)
    _WORKER.update(params=load_params(params_file), features=load_features(features_dir))


def _job(job: tuple[str, int, int, str]) -> dict[str, Any]:
    name, epochs, seed, root = job
    return run_candidate(_WORKER["params"], _WORKER["features"], CANDIDATES[name], epochs, seed, Path(root))


def main(
    epochs: int = typer.Option(8, help="Epochs per candidate (times its epochs_factor)."),
    seed: int = typer.Option(1, help="The one training seed."),
    candidates: str = typer.Option(",".join(CANDIDATES), help="Comma-separated candidate names."),
    workers: int = typer.Option(1, help="Parallel single-threaded processes (each on the GPU when present)."),
    params_file: str = typer.Option("params.yaml", help="The base parameters."),
    features_dir: str = typer.Option("data/features", help="The feature cache."),
    out: Path = typer.Option(Path("benchmarks/results/order_search.json"), help="Results JSON."),
) -> None:
    """Train each candidate for one seed and write its val-split numbers to ``--out`` as it finishes."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from discovla.artifacts.adapters import checkpoint_root

    names = [c.strip() for c in candidates.split(",") if c.strip()]
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        raise typer.BadParameter(f"unknown candidates {unknown}; choose from {list(CANDIDATES)}")
    result: dict[str, Any] = read_json(out) if out.exists() else {}
    result.setdefault("split", "val")
    result.setdefault("runs", {})
    root = str(checkpoint_root())
    # longest first, so the long candidates do not finish last on an otherwise idle pool
    jobs = sorted(
        ((n, epochs, seed, root) for n in names),
        key=lambda j: -int(CANDIDATES[j[0]].get("epochs_factor", 1)),
    )
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max(1, workers), ctx, _init, (params_file, features_dir)) as pool:
        futures = {pool.submit(_job, job): job for job in jobs}
        for future in as_completed(futures):
            name = futures[future][0]
            try:
                result["runs"][name] = future.result()
            except Exception as exc:  # one failed candidate must not lose the others
                result["runs"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            write_json(out, result)
            r = result["runs"][name]
            print(
                f"{name}: val R@1 {r.get('val_t2v_R@1')}, reversal {r.get('val_reversal_acc')} / "
                f"{r.get('val_reversal_ordered_acc')}, {r.get('seconds')} s",
                flush=True,
            )


if __name__ == "__main__":
    typer.run(main)
