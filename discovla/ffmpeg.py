"""Locate the ffmpeg binary, for the code that ENCODES video: the shapes world's clips and the tests'.

Order: ``$DISCOVLA_FFMPEG``, then the binary shipped in the ``imageio-ffmpeg`` wheel (pinned, so encodes
are identical on every machine), then ``ffmpeg`` on ``PATH``. No ffprobe is needed anywhere. Decoding
(:mod:`discovla.sampling`) does not use this binary: it runs FFmpeg's libraries in process through PyAV
(the ``av`` wheel, which bundles its own).
"""

from __future__ import annotations

import functools
import os
import shutil

from discovla.errors import DiscoVLAError


class FFmpegNotFound(DiscoVLAError, RuntimeError):
    """No usable ffmpeg binary; the message says what to install or set."""


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary, or :class:`FFmpegNotFound` with what to install."""
    env = os.environ.get("DISCOVLA_FFMPEG")
    if env:
        if not os.path.exists(env):
            raise FFmpegNotFound(f"DISCOVLA_FFMPEG={env} does not exist")
        return env
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # noqa: BLE001 - fall through to PATH
        pass
    found = shutil.which("ffmpeg")
    if found:
        return found
    raise FFmpegNotFound(
        "no ffmpeg binary: `pip install imageio-ffmpeg` (installed by `make setup`), "
        "`apt-get install ffmpeg`, or set DISCOVLA_FFMPEG=/path/to/ffmpeg"
    )
