"""Pull tokens are capabilities: logs carry a short, non-reversible id instead.

``token_id`` is the first 12 hex characters of the token's sha256: enough to
tell tokens apart in an operator's logs, useless for pulling.
"""

from __future__ import annotations

import hashlib
import re

_TOKEN_IN_PATH = re.compile(r"/wt/([a-z0-9]{12})(?=/|$)")


def token_id(token: str) -> str:
    return "t-" + hashlib.sha256(token.encode()).hexdigest()[:12]


def redact_path(path: str) -> str:
    """``/v2/wt/<token>/...`` with the token replaced by its id (also a ``/container-token/<token>`` path)."""
    path = _TOKEN_IN_PATH.sub(lambda m: f"/wt/{token_id(m.group(1))}", path)
    if path.startswith("/container-token/"):
        rest = path[len("/container-token/") :]
        token, sep, tail = rest.partition("/")
        if token:
            path = f"/container-token/{token_id(token)}{sep}{tail}"
    return path
