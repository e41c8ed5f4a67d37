"""wave-grpc: extend existing container images without rebuilding them."""

import os

__version__ = "0.1.0"

# gRPC core's own INFO lines (a failed TLS handshake, say) would precede ours on
# stderr, and ours say what to change. It reads this when grpc is first imported,
# which is after this package's __init__. GRPC_VERBOSITY set by the user still wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
