"""Handlers, one module per route family (base, manifests, blobs, tags, referrers, and Wave's REST API)."""
