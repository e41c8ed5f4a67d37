"""Handlers, one module per route family (base, manifests, blobs, tags)."""
