"""Analysis: where does order evidence that generalises live? Probes on the encoders' outputs.

    python benchmarks/order_probe.py                                    # the frozen tiny CLIP
    python benchmarks/order_probe.py --variant order_trend_w3@e8 --seed 1   # a finished run's encoders

Every order-aware ablation row fits order on its own training videos (reversal test about 87-90 % on the
train split, ``benchmarks/order_generalisation.py``) and reaches about 70 % on unseen videos. This asks
whether that ceiling is in the representation or in the fit. It encodes every train and val video once,
keeping each frame's projected CLS embedding and its last block's patch tokens (average-pooled to a
``grid`` x ``grid`` map, projected like the CLS token), and the captions' text embeddings. Then small probes,
trained on the train split only, tell a caption's video from the same video reversed: a probe maps a
video's frames to a vector ``h``, a caption scores ``t . h``, and the loss is the logistic loss on
``t . h(video) - t . h(reversed)`` (L_order with the reversal as its one negative). The reversal test of
each probe is reported on the train split and on the val split (all captions, and the order-stating ones);
the test split is never read, and nothing of the pipeline is trained. A video's reversal is its frames'
encodings in reverse order, which is the reversed video's encoding for every encoder that does not see
frame positions (tested in tests/test_order.py); a run with ``fusion.temporal_position`` is refused.

Probes (``E``: embedding width, ``F``: frames, ``P``: grid cells):

- ``cls_slope``: ``W . sum_f b_f x_f``, the CLS embeddings' time slope through one E x E map: close to
  what ``temporal.trends: 1`` adds (which takes the slope of the normalised frame features);
- ``cls_linear``: one linear map of all F CLS embeddings (any linear filter over time);
- ``cls_mlp``: a two-layer MLP over all F CLS embeddings;
- ``patch_slope``: the time slope of each grid cell's token, all cells through one linear map;
- ``patch_mlp``: a two-layer MLP over every frame's grid;
- ``patch_mlp_text``: ``patch_mlp`` with the text embedding through a two-layer MLP too;
- ``cls_mlp_ngram``, ``patch_mlp_ngram``: ``cls_mlp`` and ``patch_mlp`` with the caption read as hashed word
  1-3-grams (:func:`ngram_counts`) through a two-layer MLP instead of the text encoder: a caption
  representation that keeps which words stand next to which ("circle travels right", "after which a"), to
  tell a text embedding that lacks the order from a video representation that lacks it;
- ``cls_mlp_tokens``, ``patch_mlp_tokens``: the same with the text tower's every token output (through
  ``ln_final`` and the projection, like the pooled EOT token; zero after the EOT) through a two-layer MLP:
  whether the order the pooled embedding does not carry is in the tower's token states.

With ``--variant`` the features come from that finished ablation run's encoders (LoRA, IVFusion; train it
first with ``discovla ablate``), and its own reversal test on both splits is reported beside the probes.
Writes ``benchmarks/results/order_probe[_<variant>].json``.
"""

from __future__ import annotations

import re
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import typer
from torch import Tensor, nn

from discovla.ablation import finished_run, variant_config
from discovla.artifacts.adapters import checkpoint_root
from discovla.artifacts.features import Features, load_features
from discovla.backbone import load_backbone
from discovla.batching import batches
from discovla.config import Params, load_params
from discovla.evaluate import reversal_test, rounded
from discovla.images import normalise
from discovla.io import write_json
from discovla.loader import VideoBatches, make_loader
from discovla.model import DiscoVLA
from discovla.model.temporal import trend_basis
from discovla.text import normalize_caption

SPLITS = ("train", "val")
PROBES = (
    "cls_slope",
    "cls_linear",
    "cls_mlp",
    "patch_slope",
    "patch_mlp",
    "patch_mlp_text",
    "cls_mlp_ngram",
    "patch_mlp_ngram",
    "cls_mlp_tokens",
    "patch_mlp_tokens",
)
NGRAM_BUCKETS = 4096


@dataclass
class SplitFeatures:
    """One split's encoder outputs: per video ``cls [V, F, E]`` and ``grid [V, F, P, E]``, per caption the
    normalised ``text [C, E]``, its video's row ``target [C]``, its ``captions``, their word n-gram counts
    ``ngrams [C, NGRAM_BUCKETS]`` and the text tower's projected token outputs ``tokens [C, L, E]``."""

    cls: Tensor
    grid: Tensor
    text: Tensor
    target: Tensor
    captions: list[str]
    ngrams: Tensor | None = None
    tokens: Tensor | None = None

    def __post_init__(self) -> None:
        if self.ngrams is None:
            self.ngrams = ngram_counts(self.captions)


def ngram_counts(captions: list[str], buckets: int = NGRAM_BUCKETS, n: int = 3) -> Tensor:
    """``[C, buckets]``: each caption's 1- to ``n``-grams of words and punctuation marks (after
    :func:`normalize_caption`), counted into ``buckets`` by CRC32 (the same buckets on every run and
    machine), each row L2-normalised."""
    out = torch.zeros(len(captions), buckets)
    for i, caption in enumerate(captions):
        words = re.findall(r"\w+|[^\w\s]", normalize_caption(caption))  # words and punctuation marks
        for k in range(1, n + 1):
            for j in range(len(words) - k + 1):
                out[i, zlib.crc32(" ".join(words[j : j + k]).encode()) % buckets] += 1.0
    return F.normalize(out, dim=-1)


@torch.no_grad()
def encode_split(
    model: DiscoVLA, features: Features, split: str, grid: int, batch_size: int = 256
) -> SplitFeatures:
    """Encode ``split``'s videos (frames forward) and captions with ``model``, keeping each frame's projected
    CLS embedding and its last block's patch tokens pooled to ``grid`` x ``grid`` and projected alike, and
    each caption's pooled embedding and every token's output of the text tower."""
    visual = model.clip.visual
    if (
        model.cfg.temporal_position
    ):  # the reversal below flips the encodings: only for order-equivariant encoders
        raise SystemExit(
            "order_probe reads a video's reversal as its frames' encodings reversed; with "
            "fusion.temporal_position the encoder sees frame positions, so that is not the reversed video"
        )
    if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool:
        raise SystemExit(
            "order_probe reads the patch tokens of a CLS-pooled vision tower (ln_post before pool)"
        )
    pool = visual._pool
    kept: list[Tensor] = []

    def keeping(x: Tensor) -> tuple[Tensor, Tensor]:  # the last block's tokens, as the CLS token sees them
        pooled, tokens = pool(x)
        kept.append(tokens)
        return pooled, tokens

    visual._pool = keeping
    try:
        mean, std = features.meta["mean"], features.meta["std"]
        vids = features.split_videos(split)
        plan = VideoBatches(features.pixels, vids, max(1, batch_size // features.num_frames))
        cls, grids = [], []
        for raw in make_loader(plan, 0):
            kept.clear()
            cls.append(model.encode_frames(normalise(raw, mean, std)).float())
            (tokens,) = kept
            n, p, w = tokens.shape
            side = int(round(p**0.5))
            if side * side != p:
                raise SystemExit(f"order_probe needs a square patch grid, the tower has {p} patch tokens")
            maps = tokens.transpose(1, 2).reshape(n, w, side, side)
            cells = F.adaptive_avg_pool2d(maps, grid).flatten(2).transpose(1, 2)  # [N, grid^2, W]
            if visual.proj is not None:
                cells = cells @ visual.proj
            grids.append(cells.float().view(*raw.shape[:2], grid * grid, -1))
    finally:
        del visual._pool  # the class's method again
    caps = features.split_captions(split)
    ids = features.cap_tokens[torch.tensor(caps.index.to_numpy())]
    text, states = [], []
    head = model._text_head

    def keeping_text(x: Tensor, pos: Tensor) -> Tensor:  # every token's output, projected like the EOT
        after = torch.arange(x.shape[1])[None, :] > pos[:, None]
        tokens = model.clip.ln_final(x)
        proj = model.clip.text_projection
        if proj is not None:
            tokens = proj(tokens) if isinstance(proj, nn.Linear) else tokens @ proj
        tokens = tokens.masked_fill(after[..., None], 0.0)
        states.append(F.pad(tokens.float(), (0, 0, 0, ids.shape[1] - x.shape[1])))
        return head(x, pos)

    model._text_head = keeping_text
    try:
        for sl in batches(len(ids), 256):
            text.append(F.normalize(model.encode_text(ids[sl]).float(), dim=-1))
    finally:
        del model._text_head
    row = {v: i for i, v in enumerate(vids)}
    target = torch.tensor([row[v] for v in caps.video_index.to_numpy()])
    return SplitFeatures(
        torch.cat(cls),
        torch.cat(grids),
        torch.cat(text),
        target,
        caps.caption.tolist(),
        tokens=torch.cat(states),
    )


class Probe(nn.Module):
    """``h(frames) -> [V, E]`` and the caption side ``g(text) -> [C, E]`` of one probe kind (module doc)."""

    def __init__(
        self, kind: str, frames: int, cells: int, dim: int, context: int = 0, hidden: int = 256
    ) -> None:
        super().__init__()
        if kind not in PROBES:
            raise ValueError(f"unknown probe {kind!r}: one of {', '.join(PROBES)}")
        self.kind = kind
        self.register_buffer("slope", trend_basis(frames, 1)[0])  # [F], orthonormal, antisymmetric in time
        # what the video side reads: CLS slope [E], all CLS [F*E], grid slope [P*E], all grids [F*P*E]
        width = {
            "cls_slope": dim,
            "cls_linear": frames * dim,
            "cls_mlp": frames * dim,
            "patch_slope": cells * dim,
            "patch_mlp": frames * cells * dim,
        }[kind.removesuffix("_text").removesuffix("_ngram").removesuffix("_tokens")]
        if "mlp" in kind:
            self.video: nn.Module = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, dim))
        else:
            self.video = nn.Linear(width, dim, bias=False)
        self.reads = kind.rsplit("_", 1)[-1] if kind.endswith(("_ngram", "_tokens")) else "text"
        width = {"ngram": NGRAM_BUCKETS, "tokens": context * dim}.get(self.reads, dim)
        self.text: nn.Module = (
            nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, dim))
            if kind.endswith(("_text", "_ngram", "_tokens"))
            else nn.Identity()
        )

    def caption(self, split: SplitFeatures, rows: Tensor | slice = slice(None)) -> Tensor:
        """``[C, E]``: the caption side of the score for ``split``'s captions ``rows``."""
        if self.reads == "ngram":
            return self.text(split.ngrams[rows])
        if self.reads == "tokens":
            if split.tokens is None:
                raise ValueError(
                    f"probe {self.kind} reads the text tower's token outputs; this split has none"
                )
            return self.text(split.tokens[rows].flatten(1))
        return self.text(split.text[rows])

    def forward(self, cls: Tensor, grid: Tensor) -> Tensor:
        if self.kind == "cls_slope":
            x = torch.einsum("f,vfe->ve", self.slope, cls)
        elif self.kind.startswith("cls"):
            x = cls.flatten(1)
        elif self.kind == "patch_slope":
            x = torch.einsum("f,vfpe->vpe", self.slope, grid).flatten(1)
        else:
            x = grid.flatten(1)
        return self.video(x)


def fit_probe(
    kind: str, train: SplitFeatures, steps: int = 1500, batch: int = 256, lr: float = 1e-3, seed: int = 0
) -> Probe:
    """Train one probe on ``train`` (logistic loss on each caption's video against its reversal, AdamW,
    ``steps`` steps of ``batch`` captions); returned in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    frames, cells, dim = train.grid.shape[1], train.grid.shape[2], train.cls.shape[-1]
    context = train.tokens.shape[1] if train.tokens is not None else 0
    probe = Probe(kind, frames, cells, dim, context)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.01)
    for _ in range(steps):
        pick = torch.randint(len(train.target), (batch,), generator=gen)
        vids = train.target[pick]
        forward = probe(train.cls[vids], train.grid[vids])
        backward = probe(train.cls[vids].flip(1), train.grid[vids].flip(1))
        t = probe.caption(train, pick)
        loss = F.softplus(-(t * (forward - backward)).sum(-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return probe.eval()


@torch.no_grad()
def probe_reversal(probe: Probe, split: SplitFeatures) -> dict[str, Any]:
    """The reversal test (:func:`discovla.evaluate.reversal_test`) of ``probe`` on ``split``."""
    forward = probe(split.cls, split.grid)
    backward = probe(split.cls.flip(1), split.grid.flip(1))
    return reversal_test(probe.caption(split), forward, backward, split.target.numpy(), split.captions)


@torch.no_grad()
def model_reversal(model: DiscoVLA, split: SplitFeatures) -> dict[str, Any]:
    """The model's own reversal test on ``split`` (its video embedding of the frames forward and reversed)."""
    forward = model.video_embedding(split.cls)
    backward = model.video_embedding(split.cls.flip(1))
    return reversal_test(split.text, forward, backward, split.target.numpy(), split.captions)


def _brief(rev: dict[str, Any]) -> dict[str, Any]:
    return {
        "all": rounded(rev["all"], 2),
        "ordered": rounded(rev["ordered"], 2),
        "n_ordered": rev["ordered_captions"],
    }


def run_probes(
    params: Params,
    features: Features,
    clip: nn.Module,
    variant: str | None,
    seed: int,
    grid: int,
    steps: int,
    probes: list[str],
    ckpt_root: Path,
) -> dict[str, Any]:
    """Encode the train and val splits (with ``variant``'s finished run, or the frozen CLIP), fit each probe
    on train and report its reversal test on both splits."""
    if variant:
        model, key = finished_run(params, features, clip, variant, seed, ckpt_root)
    else:  # LoRA only, zero-initialised: exactly the frozen CLIP (IVFusion would already mix the frames)
        model, key = (
            DiscoVLA(clip, variant_config(params, "lora", seed, features.num_frames).model).eval(),
            None,
        )
    t0 = time.perf_counter()
    data = {s: encode_split(model, features, s, grid) for s in SPLITS}
    out: dict[str, Any] = {
        "variant": variant or "frozen",
        "seed": seed,
        "checkpoint_key": key,
        "grid": grid,
        "steps": steps,
        "captions": {s: len(data[s].target) for s in SPLITS},
        "encode_seconds": round(time.perf_counter() - t0, 1),
        "probes": {},
    }
    if variant:
        out["model"] = {s: _brief(model_reversal(model, data[s])) for s in SPLITS}
    for kind in probes:
        t0 = time.perf_counter()
        probe = fit_probe(kind, data["train"], steps=steps, seed=seed)
        row = {s: _brief(probe_reversal(probe, data[s])) for s in SPLITS}
        row["parameters"] = sum(p.numel() for p in probe.parameters())
        row["seconds"] = round(time.perf_counter() - t0, 1)
        out["probes"][kind] = row
        print(f"{kind}: {row}", file=sys.stderr, flush=True)
    return out


def main(
    variant: str = typer.Option(
        "", help="A finished ablation row (discovla ablate); empty: the frozen CLIP."
    ),
    seed: int = typer.Option(1, help="The run's seed (and the probes')."),
    grid: int = typer.Option(4, help="Patch tokens are average-pooled to grid x grid cells."),
    steps: int = typer.Option(1500, help="Probe training steps (batches of 256 train captions)."),
    probes: str = typer.Option(",".join(PROBES), help="Comma-separated probes (module doc)."),
    params_file: Path = typer.Option(Path("params.yaml"), help="Parameters the runs were trained with."),
    features_dir: Path = typer.Option(Path("data/features"), help="The pipeline's feature cache."),
    out: Path = typer.Option(
        None, help="Results JSON (default benchmarks/results/order_probe[_<variant>].json)."
    ),
) -> None:
    """Probes of order evidence in the encoders' outputs, trained on train, reported on train and val."""
    params = load_params(params_file)
    features = load_features(features_dir)
    m = params.model
    clip = load_backbone(m.backbone, m.pretrained, context_length=m.context_length).model
    kinds = [k for k in probes.split(",") if k.strip()]
    result = run_probes(params, features, clip, variant or None, seed, grid, steps, kinds, checkpoint_root())
    result["command"] = "python benchmarks/order_probe.py " + " ".join(sys.argv[1:])
    result["threads"] = torch.get_num_threads()
    name = "order_probe" + (f"_{variant.replace('@', '_')}" if variant else "")
    path = out or Path("benchmarks/results") / f"{name}.json"
    write_json(path, result)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    typer.run(main)
