"""``python -m discovla.cli``: the ``discovla`` command."""

from discovla.cli import app

app()
