"""wave-grpc: extend existing container images without rebuilding them."""

__version__ = "0.1.0"
