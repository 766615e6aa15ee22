"""``discovla datasets``: the datasets the pipeline reads, and ``datasets check`` of a copy."""

from __future__ import annotations

import typer

from discovla.errors import exits_on_error

app = typer.Typer(
    help="The datasets the pipeline reads (data.dataset): splits, protocols, files; check a copy.",
    no_args_is_help=False,
    invoke_without_command=True,
)


@app.callback()
@exits_on_error
def datasets(ctx: typer.Context) -> None:
    """List the datasets with their splits, test protocol, the papers' frames and context length, and the
    files each reads; `discovla datasets check DATASET ROOT` reads a copy and says what it found."""
    if ctx.invoked_subcommand is not None:
        return
    from discovla.data.registry import available, dataset_info

    for name in available():
        info = dataset_info(name)
        typer.echo(f"{name}: {info.summary}")
        typer.echo(f"  splits:   {info.splits}")
        typer.echo(f"  protocol: {info.protocol}")
        setting = "the papers' setting" if info.preset else "this project's default"
        typer.echo(f"  frames {info.frames}, context length {info.context_length} ({setting})")
        typer.echo(f"  files:    {info.files}")
        typer.echo(f"  source:   {info.source}")
        if info.preset:
            typer.echo(f"  run:      {info.preset_command(name, f'data/{name}')}")


@app.command("check")
@exits_on_error
def datasets_check(
    dataset: str = typer.Argument(..., help="Dataset name (see `discovla datasets`)."),
    root: str = typer.Argument(..., help="Its directory (data.root)."),
    json_out: str | None = typer.Option(None, "--json", help="Also write the report as JSON to this file."),
) -> None:
    """Read DATASET from ROOT as the pipeline would: videos and captions per split, missing video files,
    skipped annotation rows with their reasons. Exits 2 with one `error:` line if it cannot be read."""
    from discovla.data.check import check_dataset, format_check
    from discovla.io import write_json

    report = check_dataset(dataset, root)
    typer.echo(format_check(report))
    if json_out:
        write_json(json_out, report)
