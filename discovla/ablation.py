"""The ablation of the paper's components on the current feature cache.

Variants (each trained and evaluated on the test split, last epoch, over several seeds):

- ``zeroshot``: frozen CLIP, mean of frame embeddings (no training, seed-independent);
- ``lora``: LoRA only (no IVFusion, alpha = beta = 0);
- ``ivfusion``: + IVFusion (alpha = beta = 0);
- ``pimgalign``: + PImgAlign (alpha from params, beta = 0);
- ``full``: full DiscoVLA with the paper's beta = 1 and the reference scaling (alpha from params);
- ``full_detach``: the same with the teacher S_img detached (the reference code does not detach it);
- ``beta=X``: full DiscoVLA with beta X (the params' scaling), a point of the beta sweep;
- ``full_mean``: beta = 1 with the batch-size-independent distillation scaling
  (``fusion.distill_scale: mean``): the reference scaling (sum x 100 / B^2) weighs the KL term 4x more
  at batch 32 than at the paper's batch 128.

Order-aware rows (an extension beyond the paper, :mod:`discovla.model.temporal`), at the params' alpha and
beta:

- ``order_module``: full DiscoVLA + the temporal module over frame features (frame positions);
- ``order``: the same + time-reversed copies of each video as negatives for its captions (L_order, weight
  10: at weight 1 the order term stays at chance within the 500 steps of this recipe);
- ``order_tokens``: ``order`` + frame positions on the keys of IVFusion's video-level attention
  (``fusion.temporal_position``), so the copies are encoded again from their permuted pixels;
- ``order_trend``: full DiscoVLA + the frames' time slope pooled beside their mean
  (:class:`~discovla.model.temporal.TrendPooling`, ``temporal.trends: 1``) + L_order (weight 10): order
  seen by an antisymmetric pooling instead of a module that must learn it;
- ``order_trend_module``: ``order_trend`` over the temporal module's output;
- ``order_trend_w3``: ``order_trend`` with L_order at weight 3 (the val-split search,
  ``benchmarks/order_search.py``, kept retrieval recall at that weight).

Any row with ``@eN`` appended trains N epochs instead of ``train.epochs`` (``order@e8``, ``beta=0.25@e8``):
a longer schedule for one row, beside the same row at the table's length, in one table.

The same rows run on the shapes world with static captions (``shapes.captions: static``: what a still
shows, no motion or order) through :func:`static_world_features`: the same videos, frames and pseudo
captions, only the video captions differ.

Results go to ``metrics/ablation.json`` (mean and sample standard deviation per metric) and a
Markdown table (``metrics/ablation.md``) that the README quotes.
"""

from __future__ import annotations

import re
import statistics
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from discovla.artifacts.features import Features
from discovla.config import Params
from discovla.evaluate import evaluate_model, rounded, validation_monitor, zeroshot
from discovla.pipeline import train_config

VARIANTS = ("zeroshot", "lora", "ivfusion", "pimgalign", "full", "full_detach", "full_mean")
ORDER_VARIANTS = (
    "order_module",
    "order",
    "order_tokens",
    "order_trend",
    "order_trend_module",
    "order_trend_w3",
)
# per variant: (TrainConfig overrides, DiscoVLAConfig overrides); alpha = beta = 0 also drops the text-side
# adapters, which could never receive a gradient (discovla.pipeline.train_config)
OVERRIDES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "lora": ({"alpha": 0.0, "beta": 0.0}, {"fusion": False}),
    "ivfusion": ({"alpha": 0.0, "beta": 0.0}, {"fusion": True}),
    "pimgalign": ({"beta": 0.0}, {"fusion": True}),
    "full": ({"beta": 1.0, "distill_scale": "reference"}, {"fusion": True}),
    "full_detach": ({"beta": 1.0, "distill_scale": "reference", "detach_teacher": True}, {"fusion": True}),
    "full_mean": ({"beta": 1.0, "distill_scale": "mean"}, {"fusion": True}),
    # order-aware extensions of full DiscoVLA at the params' alpha and beta (discovla.model.temporal)
    "order_module": ({"order_weight": 0.0}, {"fusion": True, "temporal_module": True}),
    "order": ({"order_weight": 10.0}, {"fusion": True, "temporal_module": True}),
    # the same with frame positions on the keys of IVFusion's video-level attention
    # (fusion.temporal_position): order seen inside the vision encoder, on patch tokens
    "order_tokens": (
        {"order_weight": 10.0},
        {"fusion": True, "temporal_module": True, "temporal_position": True},
    ),
    # the time slope of the frame features beside their mean (temporal.trends: 1), with and without the module
    "order_trend": ({"order_weight": 10.0}, {"fusion": True, "temporal_trends": 1}),
    "order_trend_module": (
        {"order_weight": 10.0},
        {"fusion": True, "temporal_module": True, "temporal_trends": 1},
    ),
    "order_trend_w3": ({"order_weight": 3.0}, {"fusion": True, "temporal_trends": 1}),
}


def _overrides(variant: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A named row, or ``beta=X``: full DiscoVLA with ``fusion.beta`` X (a point of the beta sweep); either
    with ``@eN`` appended trains N epochs instead of ``train.epochs`` (``order@e8``, ``beta=0.25@e8``)."""
    base, at, length = variant.partition("@")
    if at:
        if not re.fullmatch(r"e[1-9][0-9]*", length):
            raise ValueError(f"unknown variant {variant!r}: after @ comes eN, N epochs (order@e8)")
        train_over, model_over = _overrides(base)
        return {**train_over, "epochs": int(length[1:])}, model_over
    if variant in OVERRIDES:
        return OVERRIDES[variant]
    if variant.startswith("beta="):
        try:
            return {"beta": float(variant[5:])}, {"fusion": True}
        except ValueError:
            pass
    raise ValueError(
        f"unknown variant {variant!r} (one of {', '.join(VARIANTS + ORDER_VARIANTS)}, or beta=X; "
        "either with @eN for N epochs)"
    )


def variant_config(params: Params, variant: str, seed: int, num_frames: int) -> Any:
    """The training config of one ablation row (everything else from params)."""
    train_over, model_over = _overrides(variant)
    return train_config(params, num_frames, model_overrides=model_over, seed=seed, **train_over)


def device_label(device: Any) -> str:
    """Where a run trained: the GPU's name (``NVIDIA H200``), or ``cpu (x86_64)``."""
    import platform

    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.machine()})"


def as_recorded(cfg: Any, record: str | Path) -> Any:
    """``cfg`` as it ran where ``record`` was made. A record names the device it trained on, and the
    checkpoint key holds the device kind and precision as resolved there (``auto``: CUDA and bf16 on a GPU
    machine, CPU and fp32 elsewhere). With ``device: auto`` (or the record's own kind) the key to check is
    the one this config gets on that kind of device, so a table trained on a GPU is rebuilt from its records
    on a CPU machine, and a record of another device kind or another config still never matches."""
    import torch

    from discovla.artifacts.ablation import recorded_device

    name = recorded_device(record)
    kind = "cpu" if name is None or name.startswith("cpu") else "cuda"
    return replace(cfg, device=torch.device(kind)) if cfg.device in ("auto", kind) else cfg


def summarise_metrics(m: dict[str, Any]) -> dict[str, float]:
    out = {"t2v_R@1": m["t2v"]["R@1"], "t2v_R@5": m["t2v"]["R@5"], "v2t_R@1": m["v2t"]["R@1"]}
    for kind, acc in m.get("twins", {}).items():
        out[f"{kind}_twin_acc"] = acc
    rev = m.get("reversal") or {}
    for key, name in (("all", "reversal_acc"), ("ordered", "reversal_ordered_acc")):
        if rev.get(key) is not None:
            out[name] = rev[key]
    return rounded(out, 2)


METRICS = (
    "t2v_R@1",
    "t2v_R@5",
    "v2t_R@1",
    "content_twin_acc",
    "order_twin_acc",
    "reversal_acc",
    "reversal_ordered_acc",
    "trainable_parameters",
)


def _brief(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k != "epochs"}


def _mean_std(values: list[float]) -> dict[str, float]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 2), "std": round(std, 2), "n": len(values)}


def run_one(
    params: Params, features: Features, clip_factory: Any, variant: str, seed: int, ckpt_root: str | Path
) -> dict[str, Any]:
    """Train one (variant, seed) and evaluate it on the test split (last epoch).

    Returns the test numbers, the run's seconds (training that actually ran here plus evaluation; a
    resumed run reports the training seconds recorded in its checkpoint), its checkpoint key, and per
    epoch the training diagnostics and val R@1 (monitoring only)."""
    from discovla.train import train

    ev = params.evaluate
    if variant == "zeroshot":
        return summarise_metrics(zeroshot(features, "test", ev.chunk_size, dsl=False))
    cfg = variant_config(params, variant, seed, features.pixels.shape[1])
    t0 = time.perf_counter()
    monitor = validation_monitor(features, ev.batch_size, ev.chunk_size)
    model, record = train(clip_factory(), features, cfg, ckpt_root, on_epoch=monitor, progress=False)
    device = next(iter(model.trainable_parameters())).device
    res = evaluate_model(model, features, "test", ev.batch_size, ev.chunk_size, dsl=False, device=str(device))
    m: dict[str, Any] = summarise_metrics(res)
    m["seconds"] = round(time.perf_counter() - t0, 1)
    m["train_seconds"] = round(record["seconds"], 1)
    m["checkpoint_key"] = record["checkpoint_key"]
    m["resumed_from_epoch"] = record["resumed_from_epoch"]
    m["trainable_parameters"] = record["trainable_parameters"]
    m["device"] = device_label(device)
    m["epochs"] = [rounded(e, 4) for e in record["epochs"]]
    return m


def finished_run(
    params: Params, features: Features, clip: Any, variant: str, seed: int, ckpt_root: str | Path
) -> tuple[Any, str]:
    """The trained model of a finished run of ``variant`` (``seed``) on ``clip``, read back from its last
    checkpoint under ``ckpt_root`` in eval mode, and its checkpoint key. Nothing is trained: a run that has
    not finished is a SystemExit naming the command that trains it."""
    from discovla.artifacts.adapters import latest_checkpoint, read_checkpoint
    from discovla.model import DiscoVLA
    from discovla.train import run_key

    cfg = variant_config(params, variant, seed, features.pixels.shape[1])
    key = run_key(cfg, features, clip)
    ckpt = latest_checkpoint(Path(ckpt_root) / key)
    if ckpt is None or ckpt.name != f"epoch-{cfg.epochs:03d}":
        raise SystemExit(
            f"{variant} seed {seed} has not finished training (checkpoint key {key}, last checkpoint "
            f"{ckpt}): run `discovla ablate --variants {variant} --seeds {seed}` first"
        )
    model = DiscoVLA(clip, cfg.model)
    tensors, _ = read_checkpoint(ckpt)
    model.load_adapter_state_dict(
        {k[len("adapter.") :]: v for k, v in tensors.items() if k.startswith("adapter.")}
    )
    return model.eval(), key


_WORKER: dict[str, Any] = {}


def static_world_features(params: Params, root: str | Path = ".work/worlds") -> Path:
    """The feature cache of the shapes world with ``shapes.captions: static``, built once under ``root``.

    The videos, their sampled frames and pseudo captions do not depend on the captions setting, so the
    cache is built from the pipeline's frames store and pseudo captions (``data/frames``,
    ``data/captions.parquet``) with the static captions of the same video specs; only the caption tokens and
    embeddings differ from ``data/features``. The directory is named by a digest of the captions and of the
    pipeline's cache, so a changed world or cache builds a new one."""
    import hashlib

    from discovla.artifacts.features import cache_digest
    from discovla.backbone import load_backbone
    from discovla.data.shapes.sampling import sample_specs
    from discovla.data.shapes.world import captions_table
    from discovla.featurize import build_features

    if params.data.dataset != "shapes":
        raise ValueError(
            f"the static-caption world is a shapes-world setting; data.dataset is {params.data.dataset!r}"
        )
    shapes = params.shapes.model_copy(update={"captions": "static"})
    caps = captions_table(sample_specs(shapes), shapes)
    caps.insert(0, "caption_id", range(len(caps)))
    digest = hashlib.sha256((caps.to_csv(index=False) + cache_digest("data/features")).encode()).hexdigest()
    out = Path(root) / f"static-{digest[:12]}"
    if not (out / "manifest.json").exists():
        m = params.model
        backbone = load_backbone(m.backbone, m.pretrained, context_length=m.context_length)
        twins = Path(params.data.root) / "twins.csv"
        build_features(
            backbone, "data/frames", "data/captions.parquet", caps, out, params.features.batch_size, twins
        )
    return out


def _init_worker(params_file: str, features_dir: str) -> None:
    import torch

    from discovla.artifacts.features import load_features
    from discovla.backbone import load_backbone
    from discovla.config import load_params

    torch.set_num_threads(1)  # one process per core: no thread oversubscription
    params = load_params(params_file)
    m = params.model
    _WORKER.update(
        params=params,
        features=load_features(features_dir),
        clip_factory=lambda: load_backbone(m.backbone, m.pretrained, context_length=m.context_length).model,
    )


def _worker_job(job: tuple[str, int, str]) -> dict[str, Any]:
    variant, seed, ckpt_root = job
    return run_one(_WORKER["params"], _WORKER["features"], _WORKER["clip_factory"], variant, seed, ckpt_root)


def run_ablation(
    params: Params,
    features: Features,
    clip_factory: Any,
    seeds: Iterable[int],
    variants: Iterable[str] = VARIANTS,
    ckpt_root: str | Path | None = None,
    log: Any = print,
    workers: int = 1,
    params_file: str = "params.yaml",
    features_dir: str = "data/features",
    records: str | Path | None = None,
) -> dict[str, Any]:
    """Train and evaluate every variant for every seed; return per-run and summarised metrics.

    ``clip_factory()`` returns a fresh frozen CLIP for each run. With ``workers > 1`` the runs go to a
    pool of single-threaded processes (which reload ``params_file`` and ``features_dir``). Checkpoints go
    to ``ckpt_root`` (default: the train stage's, :func:`discovla.artifacts.adapters.checkpoint_root`),
    so a run identical in config, data, weights and code to one already finished there (by the ablation, ``dvc
    repro`` or ``dvc exp run``) is reused, and any other is trained afresh.

    With ``records`` (a folder, e.g. ``metrics/ablation_runs``) each finished run's result is written there
    as it finishes, and a run whose record carries its checkpoint key (same config, inputs, frozen weights
    and training code) is taken from the record instead of trained: an ablation that outlasts one sitting
    resumes from the records committed so far, on any machine that reproduces the inputs' bytes (one of
    another CPU type does not: README, "Reproducible on one kind of machine", and retrains).
    """
    from discovla.artifacts.ablation import read_run_record, run_record_path, write_run_record
    from discovla.artifacts.adapters import checkpoint_root
    from discovla.train import run_key

    seeds = list(seeds)
    variants = list(variants)
    ckpt_root = checkpoint_root() if ckpt_root is None else ckpt_root
    jobs = [(v, s, str(ckpt_root)) for v in variants for s in ([0] if v == "zeroshot" else seeds)]
    done: dict[tuple[str, int], dict[str, Any]] = {}
    paths: dict[tuple[str, int], Path] = {}
    if records is not None:
        clip = clip_factory()
        for v, s, _ in jobs:
            if v == "zeroshot":
                continue
            paths[v, s] = run_record_path(records, v, s)
            cfg = as_recorded(variant_config(params, v, s, features.pixels.shape[1]), paths[v, s])
            key = run_key(cfg, features, clip)
            record = read_run_record(paths[v, s], key)
            if record is not None:
                done[v, s] = record
                log(f"[ablation] {v} seed {s}: from its record {paths[v, s]} (checkpoint key {key})")
        del clip

    def finished(v: str, s: int, m: dict[str, Any]) -> None:
        done[v, s] = m
        if (v, s) in paths:
            write_run_record(paths[v, s], m)
        log(f"[ablation] {v} seed {s}: {_brief(m)}")

    # the longest runs first (a long run started last would finish alone on an idle pool), then seed-major:
    # among runs of one length, every row has its first seed before any row has its second
    def length(v: str) -> int:
        return 0 if v == "zeroshot" else int(_overrides(v)[0].get("epochs", params.train.epochs))

    todo = sorted((j for j in jobs if (j[0], j[1]) not in done), key=lambda j: (-length(j[0]), j[1]))
    if workers <= 1:
        for v, s, c in todo:
            finished(v, s, run_one(params, features, clip_factory, v, s, c))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(workers, ctx, _init_worker, (params_file, features_dir)) as pool:
            futures = {pool.submit(_worker_job, job): job for job in todo}
            for future in as_completed(futures):
                v, s, _ = futures[future]
                finished(v, s, future.result())
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for v, s, _ in jobs:
        runs[v].append(done[v, s])
    summary = {
        v: {k: _mean_std([r[k] for r in rs]) for k in rs[0] if k in METRICS} for v, rs in runs.items() if rs
    }
    devices = Counter(r["device"] for rs in runs.values() for r in rs if "device" in r)
    return {
        "devices": dict(sorted(devices.items())),
        "seeds": seeds,
        "epochs": params.train.epochs,
        "sampling": params.train.sampling,
        "summary": summary,
        "runs": runs,
    }
