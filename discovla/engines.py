"""Which engine runs the per-video stages (``frames``, ``captions``, ``index``): the ``engine`` params.

``local`` (the default) is the machine's own process pool / device; ``ray`` runs the same code as a Ray
Data pipeline (:mod:`discovla.ray_engine`) on a local Ray or a cluster. The section is ``engine`` in
``params.yaml`` (:class:`discovla.config.EngineParams`), so a sweep or a cluster run is
``dvc exp run -S engine.frames=ray``.
"""

from __future__ import annotations

from discovla.config import EngineParams
from discovla.errors import DiscoVLAError

__all__ = ["EngineError", "EngineParams"]


class EngineError(DiscoVLAError, ValueError):
    """Ray missing or unreachable when the ray engine is asked for (one line)."""
