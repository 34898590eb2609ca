"""Files in and out: rasters, vectors, tile sets, annotation batches, Label Studio, and the
files rscrisis reads back as hostile input. No torch, no model: ``rscrisis.io`` imports only
from itself, ``rscrisis.errors`` and ``rscrisis.config`` (``tests/test_layers.py``)."""
