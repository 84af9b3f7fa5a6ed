"""The torch-free base: what runtime/ and devices/ import on a board with the device install (`pip install hiap`);
its modules import only the standard library, numpy, yaml and each other."""
