"""ktransfer: knowledge transfer for PyTorch."""
