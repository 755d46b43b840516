"""Pipelines: the ab initio stages, reconstruction with known poses and orientation estimation."""
