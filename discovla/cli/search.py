"""``discovla index``, ``search`` and ``serve``: retrieval with a trained model (or the frozen CLIP)."""

from __future__ import annotations

import typer

from discovla.errors import DiscoVLAError, exits_on_error

# merged into the root command (discovla.cli): its commands are top-level
app = typer.Typer(add_completion=False)


class UsageError(DiscoVLAError, ValueError):
    """Options that do not go together, or a queries file that cannot be read (message says why)."""


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
