"""Raster and geometry algorithms: tiling, inference windows and their blending, building
polygons, label noise. Built on the ``io`` layer; never imports ``ml`` or torch."""
