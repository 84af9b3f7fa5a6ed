"""hiap: hierarchical auto-pruning of timm Vision Transformers, from training to a file that runs on the device."""

# Part of the torch-free base (docs/architecture.md): runtime/ and devices/ import it on the board, so it imports
# nothing; the heavy modules of the package are imported only by the commands that need them.
__version__ = "0.1.0"
