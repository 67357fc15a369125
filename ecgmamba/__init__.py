"""ecgmamba: 1D-CNN + bidirectional Mamba classifier for PhysioNet/CinC Challenge 2021 ECGs."""

__version__ = "0.1.0"
__all__ = ["selective_scan_fn"]


def __getattr__(name):
    # Lazy, so reading records or scoring does not import torch.
    if name == "selective_scan_fn":
        from ecgmamba.selective_scan import selective_scan_fn

        return selective_scan_fn
    raise AttributeError(f"module 'ecgmamba' has no attribute {name!r}")
