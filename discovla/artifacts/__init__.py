"""One module per stage artifact: its on-disk format (docs/formats.md), its writer and its reader.

The DAG in order: :mod:`frames` (sampled frames store) -> :mod:`captions` (pseudo captions table) ->
:mod:`features` (feature cache) -> :mod:`adapters` (trained adapters and training checkpoints) ->
:mod:`index` (video embeddings for search); :mod:`metrics` writes the files under ``metrics/``.
"""
