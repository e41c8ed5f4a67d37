"""Token stores, layer stores and the content-cache protocol."""
