"""rscrisis: adapt a building-segmentation U-Net to a new crisis area with few annotations.

The package is a plain library; ``rscrisis.cli`` is a thin typer layer over it.
"""

__version__ = "0.1.0"
