"""The approximate (FAISS) index: against exact search, stored with the video index, refused when foreign."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from discovla.ann import ANN_FILE, ANN_META, AnnError, AnnParams, build_ann, default_nlist
from discovla.artifacts.index import VideoIndex, read_index, search_index, topk, write_index

MODEL = {"adapters": "models/discovla", "adapters_digest": "b" * 64, "zeroshot": False}


def _clustered(n: int, dim: int = 32, clusters: int = 20, seed: int = 0) -> torch.Tensor:
    """Unit vectors around ``clusters`` centres (real embeddings have structure; uniform ones have none)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g)
    x = centres[torch.randint(clusters, (n,), generator=g)] + 0.5 * torch.randn(n, dim, generator=g)
    return torch.nn.functional.normalize(x, dim=-1)


def _index(emb: torch.Tensor, ann: AnnParams | None = None) -> VideoIndex:
    n = len(emb)
    idx = VideoIndex([f"v{i}" for i in range(n)], [""] * n, emb, {"model": MODEL})
    if ann is not None:
        idx.ann = build_ann(emb, ann, MODEL)
    return idx


def _recall(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact, strict=True)]))


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw"])
def test_approximate_search_finds_the_exact_neighbours(kind: str) -> None:
    emb = _clustered(3000)
    queries = torch.nn.functional.normalize(
        emb[:50] + 0.1 * torch.randn(50, 32, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    exact_s, exact_r = topk(queries, emb, 10)
    ann = build_ann(emb, AnnParams(kind=kind, nlist=16, nprobe=4, m=8), MODEL)
    scores, rows = ann.search(queries, 10, emb)
    assert rows.shape == (50, 10)
    assert _recall(rows, exact_r.numpy()) >= 0.9
    # returned scores are the exact cosine of the returned rows (ivfpq: re-ranked with the embeddings)
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", emb.numpy()[rows], queries.numpy()), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


def test_ivf_scanning_every_cell_is_exact_search() -> None:
    emb = _clustered(2000)
    queries = torch.nn.functional.normalize(
        torch.randn(20, 32, generator=torch.Generator().manual_seed(2)), dim=-1
    )
    ann = build_ann(emb, AnnParams(kind="ivf", nlist=16), MODEL)
    _, rows = ann.search(queries, 5, nprobe=16)
    _, exact = topk(queries, emb, 5)
    assert (rows == exact.numpy()).all()
    # one cell of 16 is not enough to find them all: the approximation is real
    _, one = ann.search(queries, 5, nprobe=1)
    assert _recall(one, exact.numpy()) < 1.0


def test_the_approximate_index_is_stored_with_the_index_and_used_by_search(tmp_path: Path) -> None:
    emb = _clustered(1000)
    idx = _index(emb, AnnParams(kind="ivf", nlist=8, nprobe=2))
    write_index(tmp_path / "idx", idx)
    files = sorted(p.name for p in (tmp_path / "idx").iterdir())
    assert files == [ANN_FILE, ANN_META, "index.json", "index.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # one atomic directory
    side = json.loads((tmp_path / "idx" / ANN_META).read_text())
    assert side["model"] == MODEL and side["kind"] == "ivf" and side["rows"] == 1000
    assert side["params"]["nlist"] == 8 and side["params"]["nprobe"] == 2
    back = read_index(tmp_path / "idx")
    assert back.ann is not None and back.ann.rows == 1000
    q = torch.nn.functional.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(3)), dim=-1)
    assert search_index(back, q, 5) == search_index(idx, q, 5)
    # exact=True scores every video, as an index without the approximate one does
    assert search_index(back, q, 5, exact=True) == search_index(_index(emb), q, 5)
    every_cell, exact = search_index(back, q, 5, nprobe=8), search_index(_index(emb), q, 5)
    assert [[h[1] for h in hits] for hits in every_cell] == [[h[1] for h in hits] for hits in exact]
    assert [h[2] for h in every_cell[0]] == pytest.approx([h[2] for h in exact[0]], abs=1e-6)


def test_an_approximate_index_of_other_embeddings_is_refused(tmp_path: Path) -> None:
    idx = _index(_clustered(500), AnnParams(kind="ivf", nlist=4))
    write_index(tmp_path / "idx", idx)
    side = tmp_path / "idx" / ANN_META
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "model": {**MODEL, "adapters_digest": "c" * 64}}))
    with pytest.raises(AnnError, match="another model's embeddings"):
        read_index(tmp_path / "idx")
    side.write_text(json.dumps({**meta, "rows": 499}))
    with pytest.raises(AnnError, match="holds 500 videos, index.parquet 500|rebuild"):
        read_index(tmp_path / "idx")
    assert read_index(tmp_path / "idx", ann=False).ann is None  # the exact index still reads


def test_a_rebuild_reuses_the_trained_cells() -> None:
    emb = _clustered(1200)
    first = build_ann(emb[:1000], AnnParams(kind="ivfpq", nlist=8, m=8), MODEL)
    again = build_ann(emb, AnnParams(kind="ivfpq", nlist=8, m=8), MODEL, previous=first)
    assert again.meta["reused_training"] and again.rows == 1200
    other = build_ann(emb, AnnParams(kind="ivfpq", nlist=16, m=8), MODEL, previous=first)
    assert not other.meta["reused_training"]  # other parameters: trained afresh


def test_a_grown_index_chooses_its_cells_again(tmp_path: Path) -> None:
    emb = _clustered(5000)
    first = _index(emb[:400], AnnParams(kind="ivf"))  # nlist and nprobe left to choose
    write_index(tmp_path / "idx", first)
    back = read_index(tmp_path / "idx").ann
    assert back.params.nlist == default_nlist(400) == 10 and back.requested == AnnParams(kind="ivf")
    # a rebuild of the grown index resolves the request again: more cells, trained afresh
    grown = build_ann(emb, back.requested, MODEL, previous=back)
    assert grown.params.nlist == default_nlist(5000) == 64 and not grown.meta["reused_training"]
    # what was fixed stays fixed, and its trained cells are reused
    fixed = _index(emb[:400], AnnParams(kind="ivf", nlist=8)).ann
    again = build_ann(emb, fixed.requested, MODEL, previous=fixed)
    assert again.params.nlist == 8 and again.meta["reused_training"]


def test_bad_parameters_say_what_to_do() -> None:
    with pytest.raises(AnnError, match="choose one of ivf, ivfpq, hnsw"):
        AnnParams(kind="lsh")
    with pytest.raises(AnnError, match="nlist=64 cells for only 10 videos"):
        build_ann(_clustered(10), AnnParams(kind="ivf", nlist=64))
    with pytest.raises(AnnError, match="m=5 must divide"):
        build_ann(_clustered(100), AnnParams(kind="ivfpq", nlist=2, m=5))
    assert default_nlist(1_000_000) == 1024 and default_nlist(100_000) == 256 and default_nlist(100) == 2
