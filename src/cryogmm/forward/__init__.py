"""Forward models: how a density becomes an observed image (CTF, ...)."""
