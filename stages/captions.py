"""Stage `captions`: one pseudo caption per sampled frame (BLIP captioner, `oracle`, or imported JSON).

Reads params `data` and `captioner`, the frames shards `data/frames/shard-*.parquet` and, on the shapes
world, `<data.root>/frame_truth.parquet`; writes `data/captions.parquet` (video_id, frame, caption: exactly
one row per frame row) and `metrics/captions.json` (counts, speed, agreement with the shapes ground truth).
"""

from __future__ import annotations

from discovla.captioner import make_captions, write_captions
from discovla.config import load_params_or_exit
from discovla.errors import run_stage
from discovla.io import write_json

FRAMES = "data/frames"
OUT = "data/captions.parquet"
METRICS = "metrics/captions.json"


def main() -> None:
    params = load_params_or_exit()
    c = params.captioner
    captions, metrics = make_captions(
        c.model,
        FRAMES,
        batch_size=c.batch_size,
        max_new_tokens=c.max_new_tokens,
        num_beams=c.num_beams,
        dataset=params.data.dataset,
        root=params.data.root,
    )
    write_captions(OUT, captions)
    write_json(METRICS, metrics)
    agreement = metrics.get("agreement", {})
    extra = f", exact match {agreement['exact_match']:.3f}" if agreement else ""
    print(
        f"captions: {metrics['frames']} frames of {metrics['videos']} videos, "
        f"{metrics['empty_captions']} empty, "
        f"{metrics['captions_per_s']:.0f}/s{extra}"
    )


if __name__ == "__main__":
    run_stage(main)
