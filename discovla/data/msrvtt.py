"""MSRVTT (1k-A split, CLIP4Clip files) -- reader to be completed."""

from __future__ import annotations
