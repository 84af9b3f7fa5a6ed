"""hiap: hierarchical auto-pruning of timm Vision Transformers, from training to a file that runs on the device."""

__version__ = "0.1.0"
