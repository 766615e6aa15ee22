"""The shapes world: a seeded, fully offline video-text retrieval benchmark (DESIGN.md section 4).

Two corpora are generated from one seed:

* **Stills** (``stills/{train,val}.parquet``): single images with 1-3 objects (shape x colour x size) on a
  dark background, captioned in one canonical still style, objects listed left to right::

      "a small red circle at the top left and a large blue square on the right"

* **Videos** (``videos/<id>.mp4`` + ``captions.csv``): 1-3 objects that move (left, right, up, down or not
  at all) and may have an event (appear, disappear, change colour). Captions are narrative and ordered in
  time and deliberately use words and structure that still captions never use (the language discrepancy)::

      "a red circle in the upper left slides to the right, then a blue square pops up"

  Hard negatives ("twins") live in the same split as their partner: *order twins* are the exact time
  reversal (identical frame set), *content twins* keep the objects, colours and places but swap which
  object moves or has the event. ``twins.csv`` lists each pair in both directions and
  ``frame_truth.parquet`` gives the still-style caption of every source frame.

Everything is a pure function of the seed: specs are sampled with a ``numpy`` Generator per video
(``SeedSequence(seed, spawn_key=...)``), so the output does not depend on the number of workers. Frames are
rendered with plain numpy masks (no anti-aliasing) and encoded with libx264 (one ffmpeg per video, one
thread, bit-exact flags).

Modules: :mod:`.scene` (vocabulary, backgrounds, shape masks, stills), :mod:`.video` (objects over time,
rendered frames), :mod:`.sampling` (video specs and twins), :mod:`.language` (still and video captions),
:mod:`.world` (writing everything to disk).
"""

from discovla.data.shapes.language import (
    MAX_CAPTION_TOKENS,
    VIDEO_PLACES,
    caption_agreement,
    caption_attributes,
    frame_captions,
    narrative_caption,
    still_caption,
    video_captions,
)
from discovla.data.shapes.sampling import (
    SPLIT_KEYS,
    content_twin_objects,
    sample_specs,
    split_counts,
    video_rng,
)
from discovla.data.shapes.scene import (
    BACKGROUND_MAX,
    COLOURS,
    POSITIONS,
    RADIUS,
    RGB,
    SHAPES,
    SIZES,
    Background,
    ShapesError,
    StillObject,
    cell_centre,
    inside_frame,
    object_radius,
    position_index,
    render_background,
    sample_background,
    sample_still,
    shape_mask,
)
from discovla.data.shapes.video import (
    DIRECTION,
    EVENTS,
    MOTIONS,
    MOVE_DISTANCE,
    OPPOSITE,
    ShapeObject,
    VideoSpec,
    event_frame,
    frame_objects,
    object_state,
    render_video,
    semantic_objects,
    slot_bounds,
)
from discovla.data.shapes.world import (
    STILLS_CHUNK,
    captions_table,
    encode_mp4,
    frame_truth_table,
    generate_world,
    make_stills,
    match_frame_truth,
    twins_table,
    write_stills,
)

__all__ = [
    "BACKGROUND_MAX",
    "COLOURS",
    "DIRECTION",
    "EVENTS",
    "MAX_CAPTION_TOKENS",
    "MOTIONS",
    "MOVE_DISTANCE",
    "OPPOSITE",
    "POSITIONS",
    "RADIUS",
    "RGB",
    "SHAPES",
    "SIZES",
    "SPLIT_KEYS",
    "STILLS_CHUNK",
    "VIDEO_PLACES",
    "Background",
    "ShapeObject",
    "ShapesError",
    "StillObject",
    "VideoSpec",
    "caption_agreement",
    "caption_attributes",
    "captions_table",
    "cell_centre",
    "content_twin_objects",
    "encode_mp4",
    "event_frame",
    "frame_captions",
    "frame_objects",
    "frame_truth_table",
    "generate_world",
    "inside_frame",
    "make_stills",
    "match_frame_truth",
    "narrative_caption",
    "object_radius",
    "object_state",
    "position_index",
    "render_background",
    "render_video",
    "sample_background",
    "sample_specs",
    "sample_still",
    "semantic_objects",
    "shape_mask",
    "slot_bounds",
    "split_counts",
    "still_caption",
    "twins_table",
    "video_captions",
    "video_rng",
    "write_stills",
]
