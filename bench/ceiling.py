"""The ceiling: a bare aiohttp handler answering fixed manifest bytes.

``python -m bench.ceiling PORT FILE MEDIA_TYPE`` serves FILE's bytes at every
path, with the same headers the gateway sends, and nothing else.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from aiohttp import web


def main() -> None:
    port, path, media_type = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    body = path.read_bytes()
    headers = {
        "Content-Type": media_type,
        "Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest(),
        "Docker-Distribution-API-Version": "registry/2.0",
    }

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
