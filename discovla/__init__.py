"""DiscoVLA: discrepancy reduction in vision, language and alignment for parameter-efficient
video-text retrieval (CVPR 2025), as a reproducible pipeline.

``from discovla import Retriever`` is the search API (:mod:`discovla.retriever`). It is loaded on first use,
so importing any other module of the package never loads the retriever; the package's own code imports it
from :mod:`discovla.retriever` (tests/test_dvc_deps.py checks that).
"""

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["Retriever"]


def __getattr__(name: str) -> Any:
    if name == "Retriever":  # by name, so that reading the imports of a stage does not pull the retriever in
        return importlib.import_module("discovla.retriever").Retriever
    raise AttributeError(f"module 'discovla' has no attribute {name!r}")
