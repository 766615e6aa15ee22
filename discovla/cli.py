"""The ``discovla`` command: pipeline stages and tools.

Each DVC stage in ``dvc.yaml`` runs a thin script in ``stages/``; the same work is reachable here for
use outside DVC. Run ``discovla --help`` for the list. Like the stage scripts, a command that fails
with a known error (:class:`discovla.errors.DiscoVLAError`) prints one line ``error: ...`` and exits 2.
"""

from __future__ import annotations

import typer

from discovla.errors import exits_on_error

app = typer.Typer(
    help="DiscoVLA video-text retrieval pipeline (run `dvc repro` for the whole pipeline).",
    no_args_is_help=True,
    add_completion=False,
)


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
        "zeroshot,lora,ivfusion,pimgalign,full,full_detach,full_mean",
        help="Comma-separated ablation rows: zeroshot, lora, ivfusion, pimgalign, full, full_detach, "
        "full_mean, or beta=X (full DiscoVLA with fusion.beta X, a point of the beta sweep).",
    ),
    params_file: str = typer.Option("params.yaml", help="Parameters (train/fusion/lora/model/evaluate)."),
    features_dir: str = typer.Option("data/features", help="Feature cache written by the features stage."),
    out: str = typer.Option("metrics/ablation.json", help="Summary JSON; a Markdown table goes next to it."),
    workers: int = typer.Option(1, help="Parallel single-threaded training processes (e.g. one per core)."),
) -> None:
    """Train and evaluate the paper's ablation (zero-shot, LoRA, +IVFusion, +PImgAlign, full) over seeds.

    Reads the feature cache, so run `dvc repro features` first. Each run reports the test split at the
    last epoch (no selection), its checkpoint key and seconds, and per epoch its training diagnostics and
    val R@1. Runs share the train stage's checkpoint root ($DISCOVLA_CHECKPOINTS or .work/checkpoints):
    a run identical in config, data, frozen weights and code to a finished one (from `dvc exp run`, say)
    is reused; any other trains afresh. Writes metrics/ablation.json and metrics/ablation.md.
    """
    from pathlib import Path

    from discovla.ablation import run_ablation, write_ablation
    from discovla.artifacts.features import load_features
    from discovla.backbone import load_backbone
    from discovla.config import load_params_or_exit

    params = load_params_or_exit(params_file)
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
    )
    write_ablation(result, out, Path(out).with_suffix(".md"))
    typer.echo(Path(out).with_suffix(".md").read_text())


if __name__ == "__main__":
    app()
