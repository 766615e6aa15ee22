"""The video index artifact: round trip, refusing another model's index, chunked top-k with explicit ties."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from discovla.artifacts.index import (
    VideoIndex,
    VideoIndexError,
    check_model,
    read_index,
    search_index,
    skipped_frame,
    topk,
    write_index,
)

MODEL = {
    "adapters": "models/discovla",
    "adapters_digest": "a" * 64,
    "zeroshot": False,
    "base_weights_sha256": "c" * 64,
}


def _index(n: int = 5, dim: int = 8) -> VideoIndex:
    emb = torch.nn.functional.normalize(
        torch.randn(n, dim, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    return VideoIndex(
        video_ids=[f"v{i}" for i in range(n)],
        paths=[f"/videos/v{i}.mp4" if i % 2 else "" for i in range(n)],
        embeddings=emb,
        meta={"model": MODEL, "num_frames": 4, "image_size": 32},
        sizes=np.arange(n, dtype=np.int64) * 100,
        mtimes=np.arange(n, dtype=np.int64) + 10**18,
        skipped=skipped_frame(
            [{"path": "/videos/bad.mp4", "size": 7, "mtime_ns": 1, "reason": "empty file"}]
        ),
    )


def test_index_round_trip(tmp_path: Path) -> None:
    idx = _index()
    write_index(tmp_path / "idx", idx)
    back = read_index(tmp_path / "idx")
    assert back.video_ids == idx.video_ids and back.paths == idx.paths
    assert back.embeddings.dtype == torch.float32 and torch.equal(back.embeddings, idx.embeddings)
    assert (back.sizes == idx.sizes).all() and (back.mtimes == idx.mtimes).all()
    assert back.meta["model"] == MODEL and back.meta["videos"] == 5 and back.meta["embed_dim"] == 8
    assert back.skipped.to_dict("records") == idx.skipped.to_dict("records")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # atomic: no temporaries left
    # the table is plain Parquet with the documented columns
    import pyarrow.parquet as pq

    schema = pq.read_schema(tmp_path / "idx" / "index.parquet")
    assert str(schema.field("embedding").type) == "fixed_size_list<element: float>[8]"
    assert schema.names == ["video_id", "path", "embedding", "size", "mtime_ns"]


def test_an_index_of_another_model_is_refused(tmp_path: Path) -> None:
    write_index(tmp_path / "idx", _index())
    idx = read_index(tmp_path / "idx")
    check_model(idx, {**MODEL, "adapters": "elsewhere"})  # same digest and flag: the same model
    others = (
        {**MODEL, "adapters_digest": "b" * 64},
        {**MODEL, "zeroshot": True},
        {**MODEL, "base_weights_sha256": "d" * 64},  # the same adapters on other frozen weights
    )
    for other in others:
        with pytest.raises(VideoIndexError, match="was computed with another model") as err:
            check_model(idx, other, tmp_path / "idx")
        assert "rebuild it" in str(err.value) and "aaaaaaaaaaaa" in str(err.value)
    # an index that does not record its base weights cannot be vouched for
    legacy = {k: v for k, v in MODEL.items() if k != "base_weights_sha256"}
    with pytest.raises(VideoIndexError, match="base weights sha256 unrecorded"):
        check_model(_index_with(legacy), MODEL)


def test_a_zeroshot_index_is_the_base_weights_alone() -> None:
    zs = {**MODEL, "zeroshot": True}
    # other adapters, the same frozen CLIP: the same zero-shot embeddings
    check_model(_index_with(zs), {**zs, "adapters": "other", "adapters_digest": "e" * 64})
    with pytest.raises(VideoIndexError, match=r"zero-shot CLIP \(base weights sha256 cccccccccccc\)"):
        check_model(_index_with(zs), {**zs, "base_weights_sha256": "d" * 64})


def _index_with(model: dict) -> VideoIndex:
    idx = _index()
    idx.meta = {**idx.meta, "model": model}
    return idx


def test_not_an_index(tmp_path: Path) -> None:
    with pytest.raises(VideoIndexError, match="is not a video index"):
        read_index(tmp_path)


def _reference(q: torch.Tensor, e: torch.Tensor, k: int) -> tuple[list[list[float]], list[list[int]]]:
    s = (q.double() @ e.double().T).tolist()
    rows = [sorted(range(len(e)), key=lambda i, r=r: (-r[i], i))[:k] for r in s]
    return [[s[j][i] for i in rr] for j, rr in enumerate(rows)], rows


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 16, 64, 65536])
@pytest.mark.parametrize("k", [1, 4, 10, 80])
def test_chunked_topk_equals_a_full_sort_with_ties_in_row_order(chunk: int, k: int) -> None:
    g = torch.Generator().manual_seed(chunk * 100 + k)
    # small integers: every dot product is exact in float32, and many scores tie
    e = torch.randint(-2, 3, (50, 6), generator=g).float()
    e[10] = e[3]
    e[40] = e[3]  # duplicates of one row, across chunk boundaries
    q = torch.randint(-2, 3, (4, 6), generator=g).float()
    q[3] = 0  # a query whose whole row ties: rows in order
    scores, rows = topk(q, e, k, chunk_size=chunk)
    ref_s, ref_r = _reference(q, e, k)
    assert rows.tolist() == ref_r and scores.tolist() == ref_s
    assert rows[3].tolist() == list(range(min(k, 50)))


def test_topk_nan_ranks_last_and_empty_index() -> None:
    e = torch.tensor([[1.0, 0.0], [float("nan"), 0.0], [0.5, 0.0]])
    _, rows = topk(torch.tensor([[1.0, 0.0]]), e, 3, chunk_size=2)
    assert rows.tolist() == [[0, 2, 1]]
    empty = VideoIndex([], [], torch.empty(0, 2), {"model": MODEL})
    assert search_index(empty, torch.ones(1, 2), 5) == [[]]


def test_search_index_returns_ranked_rows() -> None:
    idx = _index(n=6)
    hits = search_index(idx, idx.embeddings[[4]], 3)[0]
    assert [h[0] for h in hits] == [1, 2, 3]
    assert hits[0][1] == "v4" and hits[0][3] == "" and hits[0][2] == pytest.approx(1.0, abs=1e-6)
    assert [h[2] for h in hits] == sorted((h[2] for h in hits), reverse=True)


def test_topk_memory_is_one_chunk_of_scores() -> None:
    from torch.profiler import ProfilerActivity, profile

    e = torch.nn.functional.normalize(
        torch.randn(20_000, 8, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    q = e[:1].clone()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        topk(q, e, 5, chunk_size=256)
    largest = max(ev.self_cpu_memory_usage for ev in prof.events())
    assert 0 < largest <= 4 * 256 * 4  # a few float32 [1, 256] buffers, never the 20,000 scores
