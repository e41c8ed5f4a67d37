"""The egress proxy every upstream exchange goes through: ``[upstream].proxy`` and a route's own.

A proxy setting is read once into an :class:`EgressProxy`: its URL without user
information (the URL is named in messages), the user and the password (from an
environment variable, never from the config file) and the hosts reached directly
(``no_proxy``).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from wave_grpc.addresses import ip_literal
from wave_grpc.config.table import KeyProblem

# proxy = "env": the variables curl, docker and Nextflow read (upper case first, as curl does).
PROXY_ENV = ("HTTPS_PROXY", "https_proxy")
NO_PROXY_ENV = ("NO_PROXY", "no_proxy")
DIRECT = "direct"


@dataclass(frozen=True, slots=True)
class EgressProxy:
    """An HTTP proxy (HTTPS targets through CONNECT) and the hosts that bypass it."""

    url: str  # http://host:port, without user information
    username: str = ""
    # Never in a repr (a config is logged at debug); scrubbed from upstream text (registry/auth.py).
    password: str = field(default="", repr=False)
    # What to fix when the proxy refuses our credentials ("[upstream].proxy_password_env WAVE_PROXY_PASSWORD").
    credentials_from: str = ""
    no_proxy: tuple[str, ...] = ()
    setting_key: str = "[upstream].proxy"  # the key that named this proxy, for messages

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80

    @property
    def authorization(self) -> dict[str, str]:
        """The ``Proxy-Authorization`` header for this proxy's credentials (empty without a password).

        Made here, not with ``aiohttp.BasicAuth`` (deprecated in aiohttp 3.14; 3.10 lacks
        ``encode_basic_auth``). An https target sends it on the CONNECT only; a plain-http
        request goes to the proxy itself and carries it.
        """
        if not self.password:
            return {}
        credentials = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {"Proxy-Authorization": f"Basic {credentials}"}

    def bypassed_by(self, host: str) -> bool:
        """Is ``host`` reached directly? ``no_proxy`` holds names, domains (``example.com`` and
        ``.example.com`` both match its subdomains), IP addresses, or ``*`` for every host."""
        host = host.strip("[]").lower().rstrip(".")
        for entry in self.no_proxy:
            if entry == "*" or host == entry:
                return True
            if ip_literal(entry) is None and host.endswith("." + entry.lstrip(".")):
                return True
        return False


def no_proxy_entries(values: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Each entry lower-cased, without its port (a port does not narrow a bypass here) and brackets."""
    entries = []
    for value in values:
        entry = value.strip().lower()
        if not entry:
            continue
        if entry.startswith("["):
            entry = entry[1:].partition("]")[0]
        elif entry.count(":") == 1:
            entry = entry.partition(":")[0]
        entries.append(entry.rstrip("."))
    return tuple(entries)


def _from_environment() -> tuple[str, tuple[str, ...]]:
    url = next((os.environ[name] for name in PROXY_ENV if os.environ.get(name)), "")
    if not url:
        raise KeyProblem("proxy", '"env" takes the proxy from HTTPS_PROXY (or https_proxy), which is not set')
    no_proxy = next((os.environ[name] for name in NO_PROXY_ENV if os.environ.get(name)), "")
    return url, no_proxy_entries(no_proxy.split(","))


def egress_proxy(setting: str, password_env: str, no_proxy: tuple[str, ...], *, where: str) -> EgressProxy | None:
    """The proxy a setting names ("", a URL, or "env"), or None; KeyProblem names the key to fix.

    ``where`` names the table in messages that say which credentials to fix ("[upstream]").
    """
    if not setting or setting == DIRECT:
        if password_env:
            raise KeyProblem("proxy_password_env", "is given without a proxy URL in proxy")
        return None
    from_env = setting == "env"
    url, bypass = _from_environment() if from_env else (setting, no_proxy)
    if from_env and no_proxy:
        bypass = (*bypass, *no_proxy)
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise KeyProblem(
            "proxy", f"{_shown(url)!r} must be an http:// proxy URL with a port, e.g. http://user@proxy.example:3128"
        )
    if parts.password and not from_env:
        raise KeyProblem("proxy", "must not hold a password (the config is read by many); use proxy_password_env")
    password = parts.password or ""
    credentials_from = f"the password in HTTPS_PROXY (proxy = {setting!r})" if password else ""
    if password_env:
        if password_env not in os.environ:
            raise KeyProblem("proxy_password_env", f"environment variable {password_env} is not set")
        password = os.environ[password_env]
        credentials_from = f"{where}.proxy_password_env {password_env}"
    username = parts.username or ""
    if password and not username:
        raise KeyProblem("proxy", "names no user for the password in proxy_password_env: http://user@host:port")
    if username and not password:
        raise KeyProblem("proxy_password_env", f"is required: proxy names the user {username!r}")
    netloc = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    url_text = urlunsplit(("http", f"{netloc}:{port}", "", "", ""))
    return EgressProxy(url_text, username, password, credentials_from, bypass, f"{where}.proxy")


def _shown(url: str) -> str:
    """A proxy URL for a message: its password (from the environment) masked."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    return url.replace(f":{parts.password}@", ":***@")
