"""``python -m wave_grpc.cli``: how the tests and the gateway pool (wave_grpc/serving.py) start it."""

from __future__ import annotations

import sys

from wave_grpc.cli.entry import main

sys.exit(main())
