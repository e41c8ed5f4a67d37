"""The address policy: the one place that decides whether a host or a URL may be contacted or handed out.

Every URL the service or the gateway meets on behalf of a caller goes through
here: a registry endpoint, a token realm a registry announces, a redirect hop,
an http(s) layer location a runtime will be sent to, an upstream redirect
relayed to a runtime.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from wave_grpc.config import Config
from wave_grpc.errors import invalid_argument


def forbidden_host(host: str) -> bool:
    """Addresses no route may reach even by redirect: link-local (cloud metadata
    endpoints live at 169.254.169.254 and fe80::), unspecified and multicast."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return address.is_link_local or address.is_unspecified or address.is_multicast


def contactable_url(url: str) -> bool:
    """May the service follow this URL (a redirect hop, a token realm, a relayed redirect)?

    It must be http(s) with a host, and the host must not be a forbidden address.
    """
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not forbidden_host(parts.hostname or "")


def host_matches(pattern: str, host: str, port: int | None) -> bool:
    """``host``, ``host:port``, ``[v6]:port`` or ``*.suffix`` against a URL's host and port."""
    pattern_host, pattern_port = pattern, None
    if pattern.startswith("["):
        pattern_host, _, rest = pattern[1:].partition("]")
        pattern_port = int(rest[1:]) if rest.startswith(":") else None
    elif ":" in pattern:
        pattern_host, _, port_text = pattern.rpartition(":")
        pattern_port = int(port_text)
    if pattern_port is not None and pattern_port != port:
        return False
    if pattern_host.startswith("*."):
        return host.endswith(pattern_host[1:]) and len(host) > len(pattern_host) - 1
    return host == pattern_host


def check_layer_location(config: Config, url: str, field: str) -> None:
    """Refuse an http(s) layer location whose host is not in ``[upstream].layer_hosts``.

    Runtimes are redirected to these URLs, and nothing else may be: an unlisted
    host (an internal address, a metadata endpoint) is INVALID_ARGUMENT naming
    ``field``. Credentials in the URL are refused too: they would be handed to
    every runtime that pulls the image.
    """
    parts = urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        raise invalid_argument(field, "has an invalid port") from None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise invalid_argument(field, "must be an http(s) URL with a host")
    if parts.username or parts.password:
        raise invalid_argument(field, "must not carry credentials (user:password@); use a presigned URL or upload")
    if forbidden_host(host) or not any(host_matches(p, host, port) for p in config.upstream.layer_hosts):
        listed = ", ".join(config.upstream.layer_hosts) or "none"
        raise invalid_argument(
            field,
            f"host {host}{f':{parts.port}' if parts.port else ''} is not an allowed layer host (allowed: {listed}); "
            "upload the layer (data: or UploadLayer) or ask the operator to add it to [upstream].layer_hosts",
        )
