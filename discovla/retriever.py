"""Use what was trained: embed texts and videos with the trained adapters (or the frozen CLIP) and search.

:meth:`Retriever.load` reads ``config.json`` next to ``adapters.safetensors`` (written by the train stage:
backbone, pretrained weights, context length and the model config), builds the frozen backbone and puts the
adapters on it. The base CLIP may also be named by the caller (``backbone``, ``pretrained``), so adapters
shared alone with their model card (``README.md``, :mod:`discovla.artifacts.card`) load anywhere; the
card's hash of the frozen weights is checked. ``zeroshot=True`` keeps the frozen CLIP only. Embeddings are
computed exactly as the evaluate stage computes them (:mod:`discovla.evaluate`):

- text: the trained text encoder on the backbone's tokens, L2-normalised (zero-shot: the frozen text
  embedding);
- video: F frames sampled with :func:`discovla.sampling.sample_frames` (F from the model config, the
  backbone's image size), normalised with the backbone's mean/std, the trained frame encoder and
  ``normalise(mean_f normalise(frame))`` (zero-shot: the same mean over frozen frame embeddings).

A :class:`Retriever` knows which model it is (:attr:`Retriever.identity`: the adapters directory's content
digest, the zero-shot flag and the digest of the frozen CLIP's weights), and :meth:`Retriever.search`
refuses an index computed by another one.

    retriever = Retriever.load("models/discovla")
    for rank, video_id, score, path in retriever.search("a red circle slides to the left", index="my-index"):
        ...
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from discovla.artifacts.index import CHUNK_ROWS, VideoIndex, check_model, read_index, search_index
from discovla.batching import batches
from discovla.errors import DiscoVLAError
from discovla.images import normalise
from discovla.io import read_json
from discovla.provenance import files_digest, tensors_digest
from discovla.runtime import resolve_device

DEFAULT_ADAPTERS = "models/discovla"
ADAPTER_FILES = ("adapters.safetensors", "config.json")

VideoInput = str | Path | np.ndarray | torch.Tensor


class AdaptersError(DiscoVLAError, ValueError):
    """An adapters directory that is missing or incomplete (message says what to run)."""


class FramesError(DiscoVLAError, ValueError):
    """Frames that the model cannot embed (wrong shape, size or count), with what would fit."""


class Hit(NamedTuple):
    """One search result: 1-based rank, video id, cosine similarity, video path ('' when unknown)."""

    rank: int
    video_id: str
    score: float
    path: str


def adapters_identity(adapters_dir: str | Path, zeroshot: bool) -> dict[str, Any]:
    """What identifies the model an index was computed with: the adapters directory's content digest
    (``adapters.safetensors`` + ``config.json``, :func:`discovla.provenance.files_digest`) and the zero-shot
    flag (``adapters`` is the directory as given, for messages only)."""
    path = Path(adapters_dir)
    missing = [name for name in ADAPTER_FILES if not (path / name).is_file()]
    if missing:
        raise AdaptersError(
            f"{path}: no {' / '.join(missing)}: train first (dvc repro train) or point --adapters at a "
            f"directory written by the train stage"
        )
    digest = files_digest([path / name for name in ADAPTER_FILES], root=path)
    return {"adapters": str(path), "adapters_digest": digest, "zeroshot": bool(zeroshot)}


def adapters_config(adapters_dir: str | Path) -> dict[str, Any]:
    """The adapters' ``config.json`` (backbone, model config, pretrained): :class:`AdaptersError` when it
    was not written by the train stage."""
    path = Path(adapters_dir)
    cfg = read_json(path / "config.json")
    absent = [k for k in ("backbone", "model") if k not in cfg]
    if absent:
        raise AdaptersError(f"{path}/config.json has no {', '.join(absent)}: not written by the train stage")
    return cfg


def resolve_pretrained(pretrained: str | None, adapters_dir: Path) -> str | None:
    """``pretrained`` from config.json: a relative checkpoint path not found from the working directory is
    looked up from the directories above the adapters (``models/discovla`` -> the repository root)."""
    if not pretrained:
        return None
    p = Path(pretrained)
    if p.is_absolute() or p.exists() or (not p.suffix and os.sep not in pretrained):
        return pretrained  # found, absolute, or an open_clip tag (openai)
    for base in adapters_dir.resolve().parents:
        if (base / p).is_file():
            return str(base / p)
    return pretrained


def _looks_like_path(pretrained: str) -> bool:
    """A checkpoint path rather than an open_clip tag (as :func:`discovla.clip_factory.create_clip` tells)."""
    return Path(pretrained).suffix in (".safetensors", ".pt", ".bin", ".pth") or os.sep in pretrained


def _check_base_weights(got: str, expected: str, path: Path, weights: str | None) -> None:
    """Raise :class:`AdaptersError` unless the frozen CLIP's tensors hash (``got``,
    :func:`discovla.provenance.tensors_digest` of its state dict) to ``expected``, the model card's
    ``base_weights_sha256``."""
    if got != expected:
        raise AdaptersError(
            f"{path}: the base CLIP weights {weights or '(random initialisation)'} are not the ones these "
            f"adapters were trained on (sha256 {got[:16]}..., the model card says {expected[:16]}...): pass "
            f"the base model named on the card (pretrained=...)"
        )


class Retriever:
    """A trained DiscoVLA (or the frozen CLIP) with its tokenizer and frame sampler; see the module doc."""

    def __init__(
        self, backbone: Any, model: Any | None, num_frames: int, identity: dict[str, Any], device: str
    ) -> None:
        self.backbone = backbone
        self.model = model
        self.num_frames = int(num_frames)
        self.identity = identity
        self.device = device
        self._index_cache: dict[str, tuple[tuple, VideoIndex]] = {}

    @classmethod
    def load(
        cls,
        adapters_dir: str | Path = DEFAULT_ADAPTERS,
        device: str = "auto",
        zeroshot: bool = False,
        *,
        backbone: str | None = None,
        pretrained: str | None = None,
    ) -> Retriever:
        """The model of ``adapters_dir`` (``config.json`` + ``adapters.safetensors``, and the model card
        ``README.md`` when present) on ``device`` (auto: CUDA when available). ``zeroshot``: the frozen CLIP
        of the same config, without the adapters.

        The frozen CLIP is the open_clip model ``backbone`` with weights ``pretrained`` (an open_clip tag
        such as ``openai``, or a checkpoint path); each defaults to what ``config.json`` records, a relative
        path being looked up from the working directory and then the directories above the adapters. So a
        directory holding only the adapters and their card, copied anywhere, loads with the base CLIP named
        here. When the card records the sha256 of the frozen weights the adapters were trained on, the
        loaded weights are checked against it (:class:`AdaptersError` on a mismatch)."""
        from discovla.artifacts.adapters import load_adapters
        from discovla.artifacts.card import LIBRARY, read_card
        from discovla.backbone import load_backbone

        path = Path(adapters_dir)
        identity = adapters_identity(path, zeroshot)
        cfg = adapters_config(path)
        weights = pretrained if pretrained is not None else resolve_pretrained(cfg.get("pretrained"), path)
        if weights and _looks_like_path(weights) and not Path(weights).is_file():
            raise AdaptersError(
                f"{path}: the base CLIP weights {weights} are not found (recorded in config.json): pass "
                f"them, Retriever.load(..., pretrained=PATH_OR_TAG) or --pretrained (the model card names "
                f"the base model)"
            )
        dev = str(resolve_device(device))
        clip = load_backbone(
            backbone or cfg["backbone"], weights, device=dev, context_length=cfg.get("context_length")
        )
        card = (read_card(path) or {}).get(LIBRARY) or {}
        base = tensors_digest(sorted(clip.model.state_dict().items()))
        if card.get("base_weights_sha256"):
            _check_base_weights(base, card["base_weights_sha256"], path, weights)
        # the frozen CLIP is part of the model: a zero-shot index is the base weights' alone
        identity = {**identity, "base_weights_sha256": base}
        model = None if zeroshot else load_adapters(path, clip.model, device=dev)
        return cls(clip, model, cfg["model"].get("num_frames", 8), identity, dev)

    # ---- what the model needs ------------------------------------------------------------------------
    @property
    def zeroshot(self) -> bool:
        return self.model is None

    @property
    def image_size(self) -> int:
        return int(self.backbone.image_size)

    @property
    def embed_dim(self) -> int:
        return int(self.backbone.embed_dim)

    def index_meta(self) -> dict[str, Any]:
        """What an index records about the model that computed it (see :mod:`discovla.artifacts.index`)."""
        return {
            "model": dict(self.identity),
            "backbone": self.backbone.name,
            "pretrained": self.backbone.pretrained,
            "num_frames": self.num_frames,
            "image_size": self.image_size,
        }

    # ---- encoders ------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised text embeddings ``[N, D]`` (float32, CPU)."""
        if isinstance(texts, str):
            texts = [texts]
        if self.model is None:
            return self.backbone.encode_texts(list(texts), batch_size)
        tokens = self.backbone.tokenize(list(texts))
        out = [
            F.normalize(self.model.encode_text(tokens[sl].to(self.device)).float(), dim=-1).cpu()
            for sl in batches(len(tokens), batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    def sample(self, path: str | Path) -> np.ndarray:
        """uint8 ``[F, S, S, 3]`` frames of one video file, as the pipeline samples them (raises
        :class:`discovla.sampling.VideoError` with a short reason when the file cannot be sampled)."""
        from discovla.sampling import sample_frames

        return sample_frames(path, self.num_frames, self.image_size).frames

    def check_frames(self, video: np.ndarray | torch.Tensor) -> torch.Tensor:
        """One video's uint8 frames ``[F, S, S, 3]`` or ``[F, 3, S, S]`` -> ``[F, 3, S, S]``, checked."""
        x = torch.as_tensor(video)
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise FramesError(
                f"a video must be a file path or uint8 frames [F, S, S, 3] / [F, 3, S, S], got "
                f"{x.dtype} {tuple(x.shape)}"
            )
        if x.shape[1] != 3:
            if x.shape[-1] != 3:
                raise FramesError(f"no RGB channel axis in frames of shape {tuple(x.shape)}")
            x = x.permute(0, 3, 1, 2)
        s = self.image_size
        if tuple(x.shape[-2:]) != (s, s):
            raise FramesError(
                f"frames are {x.shape[-2]}x{x.shape[-1]}, the backbone needs {s}x{s} (frames.size: {s})"
            )
        if self.model is not None and x.shape[0] != self.num_frames:
            raise FramesError(
                f"{x.shape[0]} frames per video, the adapters were trained on {self.num_frames} "
                f"(frames.num_frames: {self.num_frames}, or adapters trained on {x.shape[0]} frames)"
            )
        return x.contiguous()

    @torch.no_grad()
    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised video embeddings ``[B, D]`` of uint8 frames ``[B, F, 3, S, S]`` (one pass)."""
        if len(pixels) == 0:
            return torch.empty(0, self.embed_dim)
        if self.model is None:  # evaluate.zeroshot: normalise(mean of normalised frozen frame embeddings)
            b, f = pixels.shape[:2]
            frames = self.backbone.encode_images(pixels.flatten(0, 1), batch_size=max(1, b * f))
            return F.normalize(F.normalize(frames.view(b, f, -1), dim=-1).mean(1), dim=-1)
        pix = normalise(pixels.to(self.device), self.backbone.mean, self.backbone.std)
        return self.model.video_embedding(self.model.encode_frames(pix)).float().cpu()

    def encode_videos(self, videos: VideoInput | Sequence[VideoInput], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised video embeddings ``[N, D]`` (float32, CPU) of video files (sampled like the
        pipeline) or uint8 frames: an array ``[N, F, S, S, 3]`` / ``[N, F, 3, S, S]`` or a list mixing paths
        and ``[F, ...]`` arrays. ``batch_size`` counts frames per forward pass."""
        if isinstance(videos, np.ndarray | torch.Tensor):
            if videos.ndim != 5:
                raise FramesError(
                    f"frames must be [N, F, S, S, 3] or [N, F, 3, S, S], got {tuple(videos.shape)}"
                )
            items: Sequence[VideoInput] = list(videos)
        elif isinstance(videos, str | Path):
            items = [videos]
        else:
            items = list(videos)
        per_batch = max(1, batch_size // self.num_frames)
        out = []
        for sl in batches(len(items), per_batch):
            group = [self.sample(v) if isinstance(v, str | Path) else v for v in items[sl]]
            out.append(self.embed_pixels(torch.stack([self.check_frames(v) for v in group])))
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    # ---- search --------------------------------------------------------------------------------------
    def open_index(self, index: str | Path | VideoIndex) -> VideoIndex:
        """An index (directory or loaded), checked to be this model's; a directory is read once and kept
        until its files change."""
        if isinstance(index, VideoIndex):
            check_model(index, self.identity, "the index")
            return index
        path = Path(index)
        key = str(path.resolve())
        files = sorted([*path.glob("index.*"), *path.glob("ann.*")])
        stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
        cached = self._index_cache.get(key)
        if cached is None or cached[0] != stamp:
            loaded = read_index(path)
            check_model(loaded, self.identity, path)
            self._index_cache = {key: (stamp, loaded)}
            cached = self._index_cache[key]
        return cached[1]

    def search(
        self,
        text: str,
        k: int = 5,
        *,
        index: str | Path | VideoIndex,
        chunk_size: int = CHUNK_ROWS,
        exact: bool = False,
        nprobe: int | None = None,
    ) -> list[Hit]:
        """The ``k`` videos of ``index`` closest to ``text``: ``[Hit(rank, video_id, score, path), ...]``,
        best first (cosine similarity; equal scores in index order). An index built with ``--ann`` is
        searched approximately (``nprobe``: IVF cells scanned) unless ``exact``."""
        return self.search_embeddings(
            self.encode_texts([text]), k, index=index, chunk_size=chunk_size, exact=exact, nprobe=nprobe
        )[0]

    def search_embeddings(
        self,
        queries: torch.Tensor,
        k: int = 5,
        *,
        index: str | Path | VideoIndex,
        chunk_size: int = CHUNK_ROWS,
        exact: bool = False,
        nprobe: int | None = None,
    ) -> list[list[Hit]]:
        """Per query embedding (``[Q, D]``: texts, or videos to find similar ones), its ``k`` best videos."""
        vindex = self.open_index(index)
        found = search_index(vindex, queries, k, chunk_size, exact=exact, nprobe=nprobe)
        return [[Hit(*h) for h in hits] for hits in found]
