"""ecgmamba: 1D-CNN + bidirectional Mamba classifier for PhysioNet/CinC Challenge 2021 ECGs."""

__version__ = "0.1.0"
