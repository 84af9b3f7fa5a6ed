"""`python -m hiap` runs the CLI (the form torchrun needs)."""

from hiap.cli import main

main()
