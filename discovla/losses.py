"""DiscoVLA losses: video-level InfoNCE, PImgAlign (pseudo image-level alignment) and AlignDistill.

``logit_scale`` everywhere is the multiplier tau applied to cosine similarities (the *exponentiated*
CLIP parameter: 100 for OpenAI CLIP), a float or a 0-d tensor.

* :func:`contrastive_loss`: symmetric cross-entropy over a logits matrix (rows and columns); the one
  contrastive loss of the project (tiny-CLIP pretraining uses it with repeated-caption positives).
* :func:`info_nce`: :func:`contrastive_loss` on ``tau * sim``; rows are texts (t2v), columns videos (v2t).
* :func:`pimg_similarity`: S_img between the pseudo captions of video a and the frames of video b.
* :func:`align_distill`: KL(P_img || P_video) on rows and columns (teacher S_img, student S_video).
* :func:`order_loss`: an extension beyond the paper: each caption against its own video and that video's
  time-reversed (or shuffled) copies, the copies as negatives.
* :func:`discovla_loss`: L = L_video + alpha L_img + beta L_distill (+ order_weight L_order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DISTILL_SCALES = ("reference", "mean")


def video_embedding(frame_feats: Tensor) -> Tensor:
    """``[B, F, E] -> [B, E]``: normalise each frame, mean over frames, normalise again."""
    if frame_feats.dim() != 3:
        raise ValueError(f"frame_feats must be [B, F, E], got shape {tuple(frame_feats.shape)}")
    return F.normalize(F.normalize(frame_feats, dim=-1).mean(dim=1), dim=-1)


def contrastive_loss(logits: Tensor, groups: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE on square ``logits [B, B]``: the mean of the row-wise and the column-wise
    cross-entropy. Without ``groups`` item i's positive is i. With ``groups [B]`` (e.g. caption ids), every
    pair of items in the same group is a positive and the target is uniform over an item's positives, so a
    duplicated caption is never pushed away from its own copy."""
    _check_square(logits, "logits")
    if groups is None:
        target = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    positives = (groups[:, None] == groups[None, :]).float()
    targets = positives / positives.sum(1, keepdim=True)
    rows = torch.sum(-targets * F.log_softmax(logits, dim=1), dim=1).mean()
    cols = torch.sum(-targets * F.log_softmax(logits.T, dim=1), dim=1).mean()
    return (rows + cols) / 2


def info_nce(sim: Tensor, logit_scale: float | Tensor) -> Tensor:
    """Symmetric InfoNCE on a square similarity ``[B, B]`` (row i matches column i): mean of t2v, v2t CE."""
    _check_square(sim, "sim")
    return contrastive_loss(logit_scale * sim)


def pimg_similarity(
    pseudo: Tensor, frames: Tensor, logit_scale: float | Tensor, max_elements: int = 1 << 24
) -> Tensor:
    """PImgAlign similarity ``S_img [Bt, Bv]`` from normalised pseudo-caption and frame features.

    ``pseudo: [Bt, Fp, E]`` (captions of video a), ``frames: [Bv, Fv, E]`` (frames of video b);
    ``s[a, b, j, i] = p_aj . f_bi``; text side ``m(j) = max_i s``, ``s1 = sum_j softmax_j(tau m) m``; frame
    side ``n(i) = max_j s``, ``s2 = sum_i softmax_i(tau n) n``; ``S_img = (s1 + s2) / 2``. Computed in
    chunks over ``a`` of at most ``max_elements`` entries of ``s``.
    """
    if pseudo.dim() != 3 or frames.dim() != 3 or pseudo.shape[-1] != frames.shape[-1]:
        raise ValueError(
            f"pseudo must be [Bt, F, E] and frames [Bv, F, E] with the same E, got "
            f"{tuple(pseudo.shape)} and {tuple(frames.shape)}"
        )
    per_row = frames.shape[0] * pseudo.shape[1] * frames.shape[1]
    chunk = max(1, max_elements // max(per_row, 1))
    rows = []
    for start in range(0, pseudo.shape[0], chunk):
        s = torch.einsum("ajd,bid->abji", pseudo[start : start + chunk], frames)
        m = s.max(dim=3).values  # [a, b, j]
        n = s.max(dim=2).values  # [a, b, i]
        s1 = (torch.softmax(logit_scale * m, dim=-1) * m).sum(dim=-1)
        s2 = (torch.softmax(logit_scale * n, dim=-1) * n).sum(dim=-1)
        rows.append((s1 + s2) / 2)
    return torch.cat(rows, dim=0)


def align_distill(
    s_img: Tensor,
    s_video: Tensor,
    logit_scale: float | Tensor,
    detach_teacher: bool = False,
    scale: str = "reference",
) -> Tensor:
    """AlignDistill: KL(P_img || P_video), P = softmax(tau S), on rows and on columns, averaged.

    ``scale="reference"``: (sum of the elementwise KL terms) * 100 / B**2, as the reference code (batch-size
    dependent). ``scale="mean"``: batch-mean KL (sum / B). The teacher (S_img) is not detached unless
    ``detach_teacher``.
    """
    _check_square(s_img, "s_img")
    if s_video.shape != s_img.shape:
        raise ValueError(f"s_img {tuple(s_img.shape)} and s_video {tuple(s_video.shape)} differ in shape")
    if scale not in DISTILL_SCALES:
        raise ValueError(f"distill scale must be one of {', '.join(DISTILL_SCALES)}, got {scale!r}")
    teacher = s_img.detach() if detach_teacher else s_img
    b = s_img.shape[0]
    total = 0.0
    for dim in (1, 0):  # rows (t2v), then columns (v2t)
        log_t = torch.log_softmax(logit_scale * teacher, dim=dim)
        log_s = torch.log_softmax(logit_scale * s_video, dim=dim)
        total = total + F.kl_div(log_s, log_t, reduction="sum", log_target=True)
    norm = b * b / 100.0 if scale == "reference" else float(b)
    return total / 2 / norm


def order_loss(text: Tensor, video: Tensor, copies: Tensor, logit_scale: float | Tensor) -> Tensor:
    """Cross-entropy of each caption over its own video and that video's order-corrupted copies.

    ``text [B, E]``, ``video [B, E]`` and ``copies [B, K, E]`` are normalised; row a's logits are
    ``tau * [t_a . v_a, t_a . c_a1, ..., t_a . c_aK]`` with target 0 (the video in its true order). The
    batch's other videos are already negatives in L_video; here only a video's own copies are, which share
    its frames and differ only in their order."""
    if text.dim() != 2 or video.shape != text.shape or copies.dim() != 3 or copies.shape[0] != text.shape[0]:
        raise ValueError(
            f"text and video must be [B, E] and copies [B, K, E], got {tuple(text.shape)}, "
            f"{tuple(video.shape)} and {tuple(copies.shape)}"
        )
    pos = (text * video).sum(dim=-1, keepdim=True)
    neg = torch.einsum("be,bke->bk", text, copies)
    logits = logit_scale * torch.cat([pos, neg], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def discovla_loss(
    text_feat: Tensor,
    frame_feats: Tensor,
    pseudo_feats: Tensor | None,
    logit_scale: float | Tensor,
    alpha: float = 0.3,
    beta: float = 1.0,
    detach_teacher: bool = False,
    distill_scale: str = "reference",
    video: Tensor | None = None,
    order_copies: Tensor | None = None,
    order_weight: float = 0.0,
) -> dict[str, Tensor]:
    """The DiscoVLA objective ``L = L_video + alpha L_img + beta L_distill`` (+ ``order_weight L_order``).

    Args:
        text_feat: ``[B, E]`` projected EOT features of the video captions (not necessarily normalised).
        frame_feats: ``[B, F, E]`` projected CLS features per frame (PImgAlign's frames).
        pseudo_feats: ``[B, F, E]`` projected EOT features of the pseudo captions, or None (then alpha and
            beta must be 0; ``img`` and ``distill`` are returned as 0).
        video: ``[B, E]`` normalised video embeddings (:meth:`DiscoVLA.video_embedding`: through the
            temporal module and trend pooling when the model has them); None: the mean of ``frame_feats``
            (:func:`video_embedding`, the paper).
        order_copies: ``[B, K, E]`` normalised embeddings of each video's time-reversed (or shuffled)
            copies; with them the terms gain ``order`` (:func:`order_loss`), weighted by ``order_weight``.
    Returns:
        ``{"loss", "video", "img", "distill"}`` (``"order"`` too with ``order_copies``) and the
        :func:`batch_stats` diagnostics (0-d tensors; only ``loss`` is meant for backward).
    """
    if text_feat.dim() != 2 or frame_feats.dim() != 3 or text_feat.shape[0] != frame_feats.shape[0]:
        raise ValueError(
            f"text_feat must be [B, E] and frame_feats [B, F, E] with the same B, got "
            f"{tuple(text_feat.shape)} and {tuple(frame_feats.shape)}"
        )
    t = F.normalize(text_feat, dim=-1)
    v = video_embedding(frame_feats) if video is None else video
    s_video = t @ v.t()
    l_video = info_nce(s_video, logit_scale)
    order = {} if order_copies is None else {"order": order_loss(t, v, order_copies, logit_scale)}
    extra = order_weight * order["order"] if order else 0.0
    zero = l_video.new_zeros(())
    if pseudo_feats is None:
        if alpha != 0 or beta != 0:
            raise ValueError(
                "pseudo_feats is None but alpha or beta is non-zero: pass pseudo-caption features"
            )
        terms = {"loss": l_video + extra, "video": l_video, "img": zero, "distill": zero, **order}
        return {**terms, **batch_stats(s_video)}
    if pseudo_feats.shape[:1] != frame_feats.shape[:1]:
        raise ValueError(
            f"pseudo_feats {tuple(pseudo_feats.shape)} must have B={frame_feats.shape[0]} videos"
        )
    s_img = pimg_similarity(F.normalize(pseudo_feats, dim=-1), F.normalize(frame_feats, dim=-1), logit_scale)
    l_img = info_nce(s_img, logit_scale)
    l_distill = align_distill(s_img, s_video, logit_scale, detach_teacher=detach_teacher, scale=distill_scale)
    loss = l_video + alpha * l_img + beta * l_distill + extra
    terms = {"loss": loss, "video": l_video, "img": l_img, "distill": l_distill, **order}
    return {**terms, **batch_stats(s_video, s_img, logit_scale)}


@torch.no_grad()
def batch_stats(
    s_video: Tensor, s_img: Tensor | None = None, logit_scale: float | Tensor = 100.0
) -> dict[str, Tensor]:
    """Diagnostics of one training batch (no gradient): how often a caption ranks its own video first
    (``batch_R@1``, %, ties pessimistic), and, with the image-level teacher, how peaked the distributions
    that AlignDistill matches are: mean diagonal probability of row-softmax(tau S) for the teacher
    (``p_img_diag``) and the student (``p_video_diag``), and the teacher's mean row entropy in nats
    (``p_img_entropy``)."""
    diag = s_video.diagonal()
    out = {"batch_R@1": 100.0 * ((s_video >= diag[:, None]).sum(dim=1) == 1).float().mean()}
    if s_img is not None:
        p_img = torch.softmax(logit_scale * s_img, dim=1)
        out["p_img_diag"] = p_img.diagonal().mean()
        out["p_img_entropy"] = -(p_img * torch.log(p_img.clamp_min(1e-30))).sum(dim=1).mean()
        out["p_video_diag"] = torch.softmax(logit_scale * s_video, dim=1).diagonal().mean()
    return out


def _check_square(sim: Tensor, name: str) -> None:
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"{name} must be a square [B, B] similarity matrix, got shape {tuple(sim.shape)}")
