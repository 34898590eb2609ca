"""Prediction: tile sets (``tiles``), whole scenes (``scene``), the reader/writer threads of
the scene pipeline (``threads``) and evaluation against labels (``evaluate``)."""
