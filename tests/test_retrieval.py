"""Chunked retrieval metrics against a brute-force reference (full matrix, argsort)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from discovla.retrieval import rank_summary, recall_at, retrieval_metrics, twin_accuracy


def _ranks_by_argsort(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Rank of the best correct item per row: sort by score descending, correct items after wrong ties."""
    ranks = []
    for row, ok in zip(scores, correct, strict=True):
        order = np.lexsort((ok.astype(int), -row))  # primary: -score; ties: wrong (0) before correct (1)
        ranks.append(int(np.flatnonzero(ok[order])[0]) + 1)
    return np.array(ranks)


def reference(sim: np.ndarray, target: np.ndarray, dsl_temperature: float | None = None) -> dict:
    num_videos = sim.shape[1]
    own = target[:, None] == np.arange(num_videos)[None, :]  # [C, V]
    t2v_scores, v2t_scores = sim, sim.T
    if dsl_temperature is not None:
        t2v_scores = sim * torch.softmax(torch.from_numpy(dsl_temperature * sim), dim=0).numpy()
        v2t_scores = (sim * torch.softmax(torch.from_numpy(dsl_temperature * sim), dim=1).numpy()).T
    queried = own.any(0)
    return {
        "t2v": rank_summary(_ranks_by_argsort(t2v_scores, own)),
        "v2t": rank_summary(_ranks_by_argsort(v2t_scores[queried], own.T[queried])),
    }


def _tied_matrix(rng: np.random.Generator, captions: int, videos: int) -> tuple[np.ndarray, np.ndarray]:
    sim = rng.integers(0, 6, size=(captions, videos)).astype(np.float64) / 5.0  # many exact ties
    target = rng.integers(0, videos, size=captions)
    sim[rng.random(captions) < 0.3, :] = 0.4  # whole rows tied
    return sim, target


@pytest.mark.parametrize(("captions", "videos", "chunk"), [(37, 11, 5), (50, 50, 7), (23, 40, 1000)])
def test_sim_fn_matches_bruteforce(captions: int, videos: int, chunk: int) -> None:
    rng = np.random.default_rng(captions * videos)
    sim, target = _tied_matrix(rng, captions, videos)
    requested = []

    def sim_fn(rows: slice) -> torch.Tensor:
        requested.append(rows.stop - rows.start)
        return torch.from_numpy(sim[rows])

    got = retrieval_metrics(sim_fn, None, target, chunk_size=chunk)
    assert got == reference(sim, target)
    assert max(requested) <= chunk


def test_several_captions_per_video_and_uncaptioned_videos() -> None:
    rng = np.random.default_rng(3)
    sim = rng.normal(size=(60, 25))
    target = np.repeat(np.arange(20), 3)  # videos 20..24 have no caption: items for t2v, never v2t queries
    got = retrieval_metrics(lambda r: torch.from_numpy(sim[r]), None, target, chunk_size=13)
    assert got == reference(sim, target)
    assert got["t2v"]["queries"] == 60 and got["v2t"]["queries"] == 20


def test_embeddings_with_exact_ties_match_bruteforce() -> None:
    rng = np.random.default_rng(7)
    text = torch.from_numpy(rng.integers(-2, 3, size=(45, 4)).astype(np.float32))  # exact dot products
    video = torch.from_numpy(rng.integers(-2, 3, size=(17, 4)).astype(np.float32))
    video[5] = video[4]  # identical videos: always tied
    target = rng.integers(0, 17, size=45)
    got = retrieval_metrics(text, video, target, chunk_size=8)
    assert got == reference((text @ video.T).double().numpy(), target)


def test_dsl_matches_bruteforce_and_is_separate() -> None:
    rng = np.random.default_rng(11)
    sim = rng.normal(scale=0.3, size=(41, 19))
    sim[3, :] = sim[3, 0]  # a tied row
    target = np.concatenate([np.arange(19), rng.integers(0, 19, size=22)])
    sim_fn = lambda r: torch.from_numpy(sim[r])  # noqa: E731
    got = retrieval_metrics(sim_fn, None, target, chunk_size=6, dsl_temperature=20.0)
    plain = retrieval_metrics(sim_fn, None, target, chunk_size=6)
    ref = reference(sim, target, dsl_temperature=20.0)
    for direction in ("t2v", "v2t"):
        assert got[direction] == plain[direction]
        for key, value in ref[direction].items():
            assert got[f"{direction}_dsl"][key] == pytest.approx(value)


def test_pessimistic_ties_on_a_tiny_example() -> None:
    sim = np.array([[0.5, 0.5, 0.9], [0.2, 0.9, 0.9]])  # caption 0 -> video 0, caption 1 -> video 2
    got = retrieval_metrics(lambda r: torch.from_numpy(sim[r]), None, [0, 2], chunk_size=1, return_ranks=True)
    assert got["ranks"]["t2v"].tolist() == [3, 2]  # ties with wrong items count against the query
    assert got["ranks"]["v2t"].tolist() == [1, 2]  # video 1 has no caption: not a query
    assert got["t2v"]["R@1"] == 0.0 and got["t2v"]["MdR"] == 2.5 and got["v2t"]["R@1"] == 50.0
    assert recall_at(got["ranks"]["v2t"], 1) == 50.0


def test_bad_inputs() -> None:
    sim = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(lambda r: sim[r], None, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(lambda r: torch.full((r.stop - r.start, 3), float("nan")), None, [0, 1, 2, 0])
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_metrics(lambda r: sim[r], None, [0, 1, 2, 0], chunk_size=0)
    with pytest.raises(ValueError, match="video_emb"):
        retrieval_metrics(torch.zeros(4, 2), None, [0, 1, 2, 0])


def test_twin_accuracy_counts_ties_as_half() -> None:
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    video = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # video 2 is a bit-identical twin of 0
    pairs = [(0, 0, 1), (1, 1, 0), (0, 0, 2), (2, 1, 0), (1, 0, 1)]
    assert twin_accuracy(text, video, pairs) == 60.0  # win, win, tie, tie, loss: (1 + 1 + .5 + .5 + 0) / 5
    assert twin_accuracy(text, video, [0, 1, 0, 2, 1], [0, 1, 0, 1, 0], [1, 0, 2, 0, 1]) == 60.0
    with pytest.raises(ValueError):
        twin_accuracy(text, video, [(0, 1)])
