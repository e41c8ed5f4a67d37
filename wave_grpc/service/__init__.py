"""The AugmentService: the servicer, caller auth and the gRPC server."""
