"""The compression job as stages shared by `slimline compress` and the worker."""
