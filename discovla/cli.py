"""The ``discovla`` command: pipeline stages and tools.

Each DVC stage in ``dvc.yaml`` runs a thin script in ``stages/``; the same work is reachable here for
use outside DVC. Run ``discovla --help`` for the list.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    help="DiscoVLA video-text retrieval pipeline (run `dvc repro` for the whole pipeline).",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main() -> None:
    """DiscoVLA video-text retrieval pipeline."""


@app.command()
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


if __name__ == "__main__":
    app()
