"""Image preparation before inference: resampling (and, later, masking, centring, deconvolution)."""
