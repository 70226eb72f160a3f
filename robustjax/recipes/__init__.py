"""Reusable training recipes: supervised and contrastive pre-training on the
sparse-coding model, downstream heads, image pre-training and linear probes.
The experiments (``robustjax.experiments``) compose them."""
