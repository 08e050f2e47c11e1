"""`python -m tunelab ...`, e.g. under `torchrun --nproc_per_node N -m tunelab train ...`."""

from .cli import app

app()
