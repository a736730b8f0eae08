"""Data: synthetic phantoms, manifests, preprocessing cache and patch samplers."""
