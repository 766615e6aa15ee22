"""The ablation of the paper's components on the current feature cache.

Variants (each trained and evaluated on the test split, last epoch, over several seeds):

- ``zeroshot``: frozen CLIP, mean of frame embeddings (no training, seed-independent);
- ``lora``: LoRA only (no IVFusion, alpha = beta = 0);
- ``ivfusion``: + IVFusion (alpha = beta = 0);
- ``pimgalign``: + PImgAlign (alpha from params, beta = 0);
- ``full``: full DiscoVLA (alpha, beta and the distillation scaling from params);
- ``full_mean``: full DiscoVLA with the batch-size-independent distillation scaling
  (``fusion.distill_scale: mean``), an extra row: the reference scaling (sum x 100 / B^2) weighs the
  KL term 4x more at batch 32 than at the paper's batch 128.

Results go to ``metrics/ablation.json`` (mean and sample standard deviation per metric) and a
Markdown table (``metrics/ablation.md``) that the README quotes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from discovla.config import Params
from discovla.evaluate import evaluate_model, rounded, zeroshot
from discovla.features import Features
from discovla.io import write_json, write_text
from discovla.pipeline import train_config

VARIANTS = ("zeroshot", "lora", "ivfusion", "pimgalign", "full", "full_mean")
LABELS = {
    "zeroshot": "Zero-shot (frozen CLIP, mean of frames)",
    "lora": "LoRA only",
    "ivfusion": "+ IVFusion",
    "pimgalign": "+ PImgAlign",
    "full": "Full DiscoVLA (+ AlignDistill, reference scaling)",
    "full_mean": "Full DiscoVLA, AlignDistill with mean KL",
}


def variant_config(params: Params, variant: str, seed: int, num_frames: int) -> Any:
    cfg = train_config(params, num_frames, seed=seed)
    if variant == "lora":
        return replace(cfg, alpha=0.0, beta=0.0, model=replace(cfg.model, fusion=False))
    if variant == "ivfusion":
        return replace(cfg, alpha=0.0, beta=0.0, model=replace(cfg.model, fusion=True))
    if variant == "pimgalign":
        return replace(cfg, beta=0.0, model=replace(cfg.model, fusion=True))
    if variant == "full":
        return replace(cfg, model=replace(cfg.model, fusion=True))
    if variant == "full_mean":
        return replace(cfg, distill_scale="mean", model=replace(cfg.model, fusion=True))
    raise ValueError(f"unknown variant {variant!r} (one of {', '.join(VARIANTS)})")


def summarise_metrics(m: dict[str, Any]) -> dict[str, float]:
    out = {"t2v_R@1": m["t2v"]["R@1"], "t2v_R@5": m["t2v"]["R@5"], "v2t_R@1": m["v2t"]["R@1"]}
    for kind, acc in m.get("twins", {}).items():
        out[f"{kind}_twin_acc"] = acc
    return rounded(out, 2)


def _mean_std(values: list[float]) -> dict[str, float]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 2), "std": round(std, 2), "n": len(values)}


def run_one(
    params: Params, features: Features, clip_factory: Any, variant: str, seed: int, ckpt_root: str | Path
) -> dict[str, float]:
    """Train one (variant, seed) and evaluate it on the test split (last epoch)."""
    from discovla.train import train

    ev = params.evaluate
    if variant == "zeroshot":
        return summarise_metrics(zeroshot(features, "test", ev.chunk_size, dsl=False))
    cfg = variant_config(params, variant, seed, features.pixels.shape[1])
    t0 = time.perf_counter()
    model, _ = train(clip_factory(), features, cfg, ckpt_root, progress=False)
    device = str(next(iter(model.trainable_parameters())).device)
    res = evaluate_model(model, features, "test", ev.batch_size, ev.chunk_size, dsl=False, device=device)
    m = summarise_metrics(res)
    m["seconds"] = round(time.perf_counter() - t0, 1)
    return m


_WORKER: dict[str, Any] = {}


def _init_worker(params_file: str, features_dir: str) -> None:
    import torch

    from discovla.backbone import load_backbone
    from discovla.config import load_params
    from discovla.features import load_features

    torch.set_num_threads(1)  # one process per core: no thread oversubscription
    params = load_params(params_file)
    m = params.model
    _WORKER.update(
        params=params,
        features=load_features(features_dir),
        clip_factory=lambda: load_backbone(m.backbone, m.pretrained, context_length=m.context_length).model,
    )


def _worker_job(job: tuple[str, int, str]) -> dict[str, float]:
    variant, seed, ckpt_root = job
    return run_one(_WORKER["params"], _WORKER["features"], _WORKER["clip_factory"], variant, seed, ckpt_root)


def run_ablation(
    params: Params,
    features: Features,
    clip_factory: Any,
    seeds: Iterable[int],
    variants: Iterable[str] = VARIANTS,
    ckpt_root: str | Path = ".work/ablation",
    log: Any = print,
    workers: int = 1,
    params_file: str = "params.yaml",
    features_dir: str = "data/features",
) -> dict[str, Any]:
    """Train and evaluate every variant for every seed; return per-run and summarised metrics.

    ``clip_factory()`` returns a fresh frozen CLIP for each run. With ``workers > 1`` the runs go to a
    pool of single-threaded processes (which reload ``params_file`` and ``features_dir``); finished
    runs are resumed from their checkpoints under ``ckpt_root``.
    """
    seeds = list(seeds)
    variants = list(variants)
    jobs = [(v, s, str(ckpt_root)) for v in variants for s in ([0] if v == "zeroshot" else seeds)]
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    if workers <= 1:
        results = (run_one(params, features, clip_factory, v, s, c) for v, s, c in jobs)
        for (v, s, _), m in zip(jobs, results, strict=False):
            runs[v].append(m)
            log(f"[ablation] {v} seed {s}: {m}")
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(workers, ctx, _init_worker, (params_file, features_dir)) as pool:
            for (v, s, _), m in zip(jobs, pool.map(_worker_job, jobs), strict=True):
                runs[v].append(m)
                log(f"[ablation] {v} seed {s}: {m}")
    summary = {
        v: {k: _mean_std([r[k] for r in rs]) for k in rs[0] if k != "seconds"} for v, rs in runs.items() if rs
    }
    return {"seeds": seeds, "epochs": params.train.epochs, "summary": summary, "runs": runs}


def markdown_table(result: dict[str, Any]) -> str:
    """The ablation as a Markdown table: mean ± std over seeds."""
    summary = result["summary"]
    keys = ["t2v_R@1", "t2v_R@5", "v2t_R@1", "content_twin_acc", "order_twin_acc"]
    heads = ["t2v R@1", "t2v R@5", "v2t R@1", "content-twin acc", "order-twin acc"]
    lines = ["| Variant | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for v, m in summary.items():
        cells = []
        for k in keys:
            if k in m:
                cells.append(
                    f"{m[k]['mean']:.1f} ± {m[k]['std']:.1f}" if m[k]["n"] > 1 else f"{m[k]['mean']:.1f}"
                )
            else:
                cells.append("–")
        lines.append(f"| {LABELS.get(v, v)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_ablation(result: dict[str, Any], json_path: str | Path, md_path: str | Path) -> None:
    write_json(json_path, result)
    write_text(md_path, markdown_table(result))
