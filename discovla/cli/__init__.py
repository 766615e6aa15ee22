"""The ``discovla`` command: pipeline stages and tools.

Each DVC stage in ``dvc.yaml`` runs a thin script in ``stages/``; the same work is reachable here for
use outside DVC. Run ``discovla --help`` for the list. Like the stage scripts, a command that fails
with a known error (:class:`discovla.errors.DiscoVLAError`) prints one line ``error: ...`` and exits 2.

- here: the pipeline's tools (``doctor``, ``verify``, ``export-captions``, ``import-captions``,
  ``ablate``, ``pr-summary``);
- :mod:`discovla.cli.search`: ``index``, ``search``, ``serve`` (retrieval with a trained model);
- :mod:`discovla.cli.datasets`: ``datasets``, ``datasets check``.
"""

from __future__ import annotations

import typer

from discovla.cli import datasets, search
from discovla.errors import exits_on_error

app = typer.Typer(
    help="DiscoVLA video-text retrieval pipeline (run `dvc repro` for the whole pipeline).",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(search.app)  # index, search, serve: top-level commands
app.add_typer(datasets.app, name="datasets")


@app.callback()
def main() -> None:
    """DiscoVLA video-text retrieval pipeline."""


@app.command()
@exits_on_error
def doctor() -> None:
    """Check the installation: Python packages, the ffmpeg binary, CUDA."""
    import torch

    from discovla.ffmpeg import FFmpegNotFound, ffmpeg_exe

    try:
        exe = ffmpeg_exe()
    except FFmpegNotFound as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"ffmpeg: {exe}")
    typer.echo(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")


@app.command()
@exits_on_error
def verify(
    features: str = typer.Argument("data/features", help="Feature cache directory (features stage)."),
) -> None:
    """Hash every file of a feature cache against its manifest (loads only check sizes and times)."""
    from discovla.artifacts.features import cache_digest

    digest = cache_digest(features, verify=True)
    typer.echo(f"{features}: every file matches its manifest (content digest {digest[:16]})")


@app.command("export-captions")
@exits_on_error
def export_captions(
    out: str = typer.Argument(..., help="JSON file to write: {video_id: [caption per frame]}."),
    captions: str = typer.Option("data/captions.parquet", help="Pseudo captions (captions stage)."),
) -> None:
    """Export pseudo captions in the published DiscoVLA JSON form, to share them."""
    from discovla.artifacts.captions import export_pseudo_captions, read_captions

    df = read_captions(captions)
    export_pseudo_captions(df, out)
    typer.echo(f"wrote {df.video_id.nunique()} videos, {len(df)} captions to {out}")


@app.command("import-captions")
@exits_on_error
def import_captions(
    src: str = typer.Argument(..., help="Published pseudo-caption JSON."),
    frames: str = typer.Option("data/frames", help="Frames written by the frames stage."),
    out: str = typer.Option("data/captions.parquet", help="Where to write the captions Parquet."),
) -> None:
    """Import released pseudo captions instead of generating them (one caption per sampled frame).

    Inside the pipeline, set `captioner.model: path/to/captions.json` instead, so DVC tracks it.
    """
    from discovla.artifacts.captions import import_pseudo_captions, write_captions
    from discovla.artifacts.frames import read_frames_index

    df = import_pseudo_captions(src, read_frames_index(frames))
    write_captions(out, df)
    typer.echo(f"wrote {len(df)} captions for {df.video_id.nunique()} videos to {out}")


@app.command()
@exits_on_error
def ablate(
    seeds: str = typer.Option("1,2,3", help="Comma-separated training seeds."),
    variants: str = typer.Option(
        "zeroshot,lora,ivfusion,pimgalign,full,full_detach,full_mean,order_module,order",
        help="Comma-separated ablation rows: zeroshot, lora, ivfusion, pimgalign, full, full_detach, "
        "full_mean, order_module, order, order_tokens, order_trend, order_trend_module, order_trend_w3 "
        "(order-aware extensions), or beta=X (full DiscoVLA with fusion.beta X, a point of the beta "
        "sweep); any of them with @eN appended trains N epochs instead of train.epochs (order@e8).",
    ),
    params_file: str = typer.Option("params.yaml", help="Parameters (train/fusion/lora/model/evaluate)."),
    features_dir: str = typer.Option("data/features", help="Feature cache written by the features stage."),
    out: str = typer.Option("metrics/ablation.json", help="Summary JSON; a Markdown table goes next to it."),
    workers: int = typer.Option(1, help="Parallel single-threaded training processes (e.g. one per core)."),
    captions: str = typer.Option(
        "dataset",
        help="dataset: the feature cache's own captions. static: the shapes world with captions that say "
        "only "
        "what a still shows (shapes.captions: static), its cache built once under .work/worlds from the "
        "pipeline's frames and pseudo captions.",
    ),
) -> None:
    """Train and evaluate the paper's ablation (zero-shot, LoRA, +IVFusion, +PImgAlign, full) over seeds.

    Reads the feature cache, so run `dvc repro features` first. Each run reports the test split at the
    last epoch (no selection), its checkpoint key and seconds, and per epoch its training diagnostics and
    val R@1. Runs share the train stage's checkpoint root ($DISCOVLA_CHECKPOINTS or .work/checkpoints):
    a run identical in config, data, frozen weights and code to a finished one (from `dvc exp run`, say)
    is reused; any other trains afresh. Each finished run is recorded as it finishes under
    metrics/ablation_runs/ (next to --out): commit them, and a later `discovla ablate` (here or on another
    machine) takes every run whose record has its checkpoint key from the record and trains only the rest.
    Writes metrics/ablation.json and metrics/ablation.md.
    """
    from pathlib import Path

    from discovla.ablation import run_ablation
    from discovla.artifacts.ablation import runs_dir, write_ablation
    from discovla.artifacts.features import load_features
    from discovla.backbone import load_backbone
    from discovla.config import load_params_or_exit

    params = load_params_or_exit(params_file)
    if captions == "static":
        from discovla.ablation import static_world_features

        features_dir = str(static_world_features(params))
    elif captions != "dataset":
        raise typer.BadParameter(f"--captions must be dataset or static, got {captions!r}")
    features = load_features(features_dir)

    def clip_factory():  # noqa: ANN202
        m = params.model
        return load_backbone(m.backbone, m.pretrained, context_length=m.context_length).model

    result = run_ablation(
        params,
        features,
        clip_factory,
        seeds=[int(s) for s in seeds.split(",") if s.strip()],
        variants=[v.strip() for v in variants.split(",") if v.strip()],
        workers=workers,
        params_file=params_file,
        features_dir=features_dir,
        records=runs_dir(out),
    )
    result["captions"] = captions
    write_ablation(result, out, Path(out).with_suffix(".md"))
    typer.echo(Path(out).with_suffix(".md").read_text())


@app.command("pr-summary")
@exits_on_error
def pr_summary(
    base: str = typer.Option("main", help="Base revision: the pull request's target (main, origin/main)."),
    head: str | None = typer.Option(
        None, help="Head revision; default: the working tree (after `dvc repro`: a fresh run, checked)."
    ),
    out: str | None = typer.Option(None, help="Markdown file to write; default: print the comment."),
    images: str | None = typer.Option(
        None, help="Directory for the changed plots' PNGs; default: pr-plots/ next to --out (none without)."
    ),
    repo: str = typer.Option(".", help="The DVC repository."),
) -> None:
    """Write the pull-request comment: params that changed, metrics with old, new and delta (t2v/v2t R@1,
    R@5, MdR, twins; the ablation rows that changed; the rest folded), the changed plots as images, and
    whether the numbers are a fresh run of this checkout (`dvc status`). Reads what `dvc params diff`,
    `dvc metrics diff` and `dvc plots diff` read. The CI workflow posts it with CML (`cml comment create`).
    """
    from pathlib import Path

    from discovla.io import write_text
    from discovla.pr_summary import pr_summary as summarise

    if images is None and out is not None:
        images = str(Path(out).parent / "pr-plots")
    text = summarise(repo, base, head, images_dir=images, link_base=Path(out).parent if out else None)
    if out is None:
        typer.echo(text, nl=False)
    else:
        write_text(out, text)
        typer.echo(f"wrote {out}")
