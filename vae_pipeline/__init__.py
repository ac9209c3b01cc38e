"""Shared pieces of the VAE pipeline: paths, params, IDX files, the model.

The stages in stages/ and the flows in flows/ import from here; nothing here
does work at import time.
"""
