"""The ``discovla`` command: pipeline stages and tools.

Each DVC stage in ``dvc.yaml`` runs a thin script in ``stages/``; the same work is reachable here for
use outside DVC. Run ``discovla --help`` for the list. Like the stage scripts, a command that fails
with a known error (:class:`discovla.errors.DiscoVLAError`) prints one line ``error: ...`` and exits 2.
"""

from __future__ import annotations

import typer

from discovla.errors import DiscoVLAError, exits_on_error

app = typer.Typer(
    help="DiscoVLA video-text retrieval pipeline (run `dvc repro` for the whole pipeline).",
    no_args_is_help=True,
    add_completion=False,
)


class UsageError(DiscoVLAError, ValueError):
    """Options that do not go together, or a queries file that cannot be read (message says why)."""


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


datasets_app = typer.Typer(
    help="The datasets the pipeline reads (data.dataset): splits, protocols, files; check a copy.",
    no_args_is_help=False,
    invoke_without_command=True,
)
app.add_typer(datasets_app, name="datasets")


@datasets_app.callback()
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


@datasets_app.command("check")
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
        "full_mean, order_module, order (order-aware extensions), or beta=X (full DiscoVLA with "
        "fusion.beta X, a point of the beta sweep).",
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


DEFAULT_SPLIT_INDEX = "data/index/test"


@app.command("index")
@exits_on_error
def index_videos(
    folder: str = typer.Argument(..., help="Folder of videos (recursive: mp4, avi, mkv, webm, mov, m4v)."),
    out: str = typer.Option(
        ..., help="Index directory to write; re-running embeds only new or changed files."
    ),
    adapters: str = typer.Option("models/discovla", help="Trained adapters (train stage)."),
    pretrained: str | None = typer.Option(
        None, help="The base CLIP's weights (open_clip tag or checkpoint path); default: the adapters' own."
    ),
    zeroshot: bool = typer.Option(False, "--zeroshot", help="Frozen CLIP only (mean of frame embeddings)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    batch_size: int = typer.Option(16, min=1, help="Videos per forward pass."),
    workers: int = typer.Option(1, min=1, help="Videos decoded in parallel (one ffmpeg each)."),
    ann: str | None = typer.Option(
        None,
        help="Also build an approximate FAISS index: ivf, ivfpq or hnsw (for millions of videos); exact: "
        "none. Default: what OUT already has (exact for a new index).",
    ),
    nlist: int | None = typer.Option(None, min=1, help="ivf/ivfpq cells (default: about sqrt(videos))."),
    nprobe: int | None = typer.Option(None, min=1, help="ivf/ivfpq cells scanned per query (default)."),
    pq_bytes: int | None = typer.Option(None, min=1, help="ivfpq bytes per video (default: width / 8)."),
) -> None:
    """Embed every video of a folder with the trained model into a searchable index (see `search`).

    Videos are sampled like the pipeline (the adapters' frame count, at the backbone's size); one that
    cannot be sampled is skipped with its reason and listed in OUT/skipped.csv.
    """
    from discovla.ann import KINDS, AnnError, AnnParams
    from discovla.indexing import index_folder, summarise_skipped
    from discovla.retriever import Retriever

    params: AnnParams | str | None = ann
    if ann not in (None, "exact"):
        params = AnnParams(kind=ann, nlist=nlist, nprobe=nprobe, m=pq_bytes)
    elif nlist or nprobe or pq_bytes:
        raise AnnError(f"--nlist / --nprobe / --pq-bytes need --ann ({', '.join(KINDS)})")

    retriever = Retriever.load(adapters, device=device, zeroshot=zeroshot, pretrained=pretrained)
    report = index_folder(
        retriever,
        folder,
        out,
        batch_size=batch_size,
        workers=workers,
        log=lambda line: typer.echo(line, err=True),
        ann=params,
    )
    removed = f", dropped {report.removed} removed" if report.removed else ""
    approx = report.index.ann
    how = (
        f"; approximate index {approx.params.kind} ({approx.meta['build_s']:.1f} s)"
        if approx is not None
        else ""
    )
    typer.echo(
        f"indexed {len(report.index)} videos in {out}: embedded {report.embedded} new, "
        f"reused {report.reused}{removed}{how}"
    )
    for line in summarise_skipped(report.skipped, out):
        typer.echo(line)


def _dataset_paths() -> dict[str, str]:
    """Video paths of the pipeline's dataset (params.yaml ``data``), {} when there is none here."""
    from discovla.config import ParamsError, load_params
    from discovla.split_indexing import dataset_video_paths

    try:
        data = load_params().data
    except ParamsError:
        return {}
    return dataset_video_paths(data.dataset, data.root)


def _read_queries(source: str) -> list[tuple[str, int | None, object]]:
    """``(query, k or None, id or None)`` per non-empty line of ``source`` (a file, ``-``: stdin): plain
    text, or a JSON object ``{"query": ..., "k": ..., "id": ...}``."""
    import json
    import sys
    from pathlib import Path

    if source != "-" and not Path(source).is_file():
        raise UsageError(f"--queries {source}: no such file (one query per line, or - for stdin)")
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    out: list[tuple[str, int | None, object]] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"--queries line {n}: not JSON ({exc.msg})") from None
            q, k = obj.get("query"), obj.get("k")
            if not isinstance(q, str) or not q.strip() or not (k is None or (isinstance(k, int) and k >= 1)):
                raise UsageError(f'--queries line {n}: want {{"query": TEXT, "k": N >= 1 (optional)}}')
            out.append((q.strip(), k, obj.get("id")))
        else:
            out.append((line, None, None))
    return out


@app.command()
@exits_on_error
def search(
    query: str | None = typer.Argument(None, help="What to look for, in words (or --queries)."),
    k: int = typer.Option(5, "--k", "-k", min=1, help="Number of videos to show."),
    index: str | None = typer.Option(
        None,
        help=f"Index directory (`discovla index`). Default: the pipeline's test split, embedded once from "
        f"the feature cache into {DEFAULT_SPLIT_INDEX} (-zeroshot with --zeroshot).",
    ),
    adapters: str = typer.Option("models/discovla", help="Trained adapters (train stage)."),
    pretrained: str | None = typer.Option(
        None, help="The base CLIP's weights (open_clip tag or checkpoint path); default: the adapters' own."
    ),
    zeroshot: bool = typer.Option(False, "--zeroshot", help="Frozen CLIP only (mean of frame embeddings)."),
    features: str = typer.Option("data/features", help="Feature cache, for the default index."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    queries: str | None = typer.Option(
        None,
        help="Answer many queries in one process: a file of one query per line (text, or JSON "
        '{"query": ..., "k": ...}), - for stdin; prints one JSON line per query.',
    ),
    exact: bool = typer.Option(False, "--exact", help="Score every video even if the index has --ann."),
    nprobe: int | None = typer.Option(None, min=1, help="ivf/ivfpq cells scanned (default: the index's)."),
) -> None:
    """Find the videos that best match a text: prints rank, video id, score (cosine) and path."""
    from discovla.retriever import Retriever
    from discovla.split_indexing import ensure_split_index

    if (query is None) == (queries is None):
        raise UsageError("give a QUERY or --queries FILE (one of the two)")
    batch = _read_queries(queries) if queries is not None else []

    retriever = Retriever.load(adapters, device=device, zeroshot=zeroshot, pretrained=pretrained)
    if index is None:
        target = DEFAULT_SPLIT_INDEX + ("-zeroshot" if zeroshot else "")
        vindex, why = ensure_split_index(retriever, features, target, "test", paths=_dataset_paths)
        if why:
            typer.echo(f"indexed the test split into {target} ({why})", err=True)
    else:
        vindex = retriever.open_index(index)
    if queries is not None:
        _search_many(retriever, vindex, batch, k, exact, nprobe)
        return
    hits = retriever.search(query, k=k, index=vindex, exact=exact, nprobe=nprobe)
    rows = [("rank", "video id", "score", "path")]
    rows += [(str(h.rank), h.video_id, f"{h.score:.4f}", h.path or "-") for h in hits]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        typer.echo(f"{r[0]:>{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip())


def _search_many(
    retriever: object,
    vindex: object,
    batch: list[tuple[str, int | None, object]],
    k: int,
    exact: bool,
    nprobe: int | None,
) -> None:
    """One JSON line per query: ``{"query", ["id",] "hits": [{"rank", "video_id", "score", "path"}]}``,
    texts encoded 256 at a time."""
    import json

    from discovla.batching import batches

    for sl in batches(len(batch), 256):
        part = batch[sl]
        emb = retriever.encode_texts([q for q, _, _ in part])
        kmax = max(kk or k for _, kk, _ in part)
        found = retriever.search_embeddings(emb, kmax, index=vindex, exact=exact, nprobe=nprobe)
        for (q, kk, qid), hits in zip(part, found, strict=True):
            line: dict[str, object] = {"query": q}
            if qid is not None:
                line["id"] = qid
            line["hits"] = [
                {"rank": h.rank, "video_id": h.video_id, "score": round(h.score, 6), "path": h.path}
                for h in hits[: kk or k]
            ]
            typer.echo(json.dumps(line))


@app.command()
@exits_on_error
def serve(
    index: list[str] = typer.Option(..., help="Index directory to serve (`discovla index`); repeatable."),
    adapters: str = typer.Option("models/discovla", help="Trained adapters (train stage)."),
    pretrained: str | None = typer.Option(
        None, help="The base CLIP's weights (open_clip tag or checkpoint path); default: the adapters' own."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Serve search over HTTP: the model loaded once, a page at / and a JSON API at /api/search."""
    from discovla.serve import load_indexes
    from discovla.serve import serve as run

    served = load_indexes(index, adapters, pretrained=pretrained, device=device)
    for s in served:
        kind = f", {s.index.ann.params.kind}" if s.index.ann is not None else ""
        typer.echo(
            f"index {s.name}: {len(s.index)} videos{' (zero-shot)' if s.zeroshot else ''}{kind}", err=True
        )
    typer.echo(f"serving on http://{host}:{port}/ (Ctrl-C to stop)", err=True)
    run(served, host=host, port=port)


if __name__ == "__main__":
    app()
