"""Where learning happens: device choice, the model and its file format, losses, test-time
augmentation, metrics, datasets, training, calibration of the IoU head and adaptation to a new
area. The layers below it (``io``, ``geo``, ``synth``) never import torch."""
