"""``[[registries]]``: one route per upstream registry, with its credentials."""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from wave_grpc.config.egress import egress_proxy
from wave_grpc.config.keys import Reading, Validated, choice, filled_by_reader, read_table, readable_file, setting
from wave_grpc.config.table import ConfigError
from wave_grpc.image.ref import DOCKER_HUB

DOCKER_HUB_ENDPOINT = "https://registry-1.docker.io"
_REPOSITORY_PATH = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*")
_PUSH_REPOSITORY = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*(?:/\*)?")


class Secret(str):
    """A credential: never shown by repr or str formatting in logs."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('***')"

    @property
    def value(self) -> str:
        return str.__str__(self)


def _name(r: Reading) -> str:
    name = r.table.string(r.key)
    if not name:
        raise r.error('is required: the registry part of image references, e.g. "docker.io"')
    return name


def _endpoint(r: Reading) -> str:
    name = r.earlier["name"]
    endpoint = r.table.string(r.key, "")
    if not endpoint:
        endpoint = DOCKER_HUB_ENDPOINT if name == DOCKER_HUB else f"https://{name}"
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise r.error(f"{endpoint!r} must be an http(s) URL such as https://{name}")
    if parts.username or parts.password:
        # A URL is logged and shown in errors; a password in it would leak there.
        raise r.error("must not hold credentials; use username and password_env")
    return endpoint.rstrip("/")


def _docker_config_password(r: Reading, registry: str, path_text: str) -> tuple[str, Secret]:
    path = Path(path_text).expanduser()
    try:
        auths = json.loads(path.read_text()).get("auths", {})
    except (OSError, ValueError) as exc:
        raise r.error(f"cannot read {path}: {exc}", "docker_config") from None
    for key, entry in auths.items():
        host = urlsplit(key).netloc if "://" in key else key.split("/")[0]
        if host == registry or (registry == DOCKER_HUB and host in {"index.docker.io", "registry-1.docker.io"}):
            if entry.get("auth"):
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                return user, Secret(password)
            if entry.get("username") and entry.get("password"):
                return str(entry["username"]), Secret(entry["password"])
    raise r.error(f"{path} has no auths entry for {registry}", "docker_config")


def _credentials(r: Reading) -> dict[str, Any]:
    """username, password and where the password came from: given inline, from the environment or a docker config."""
    username = r.table.string("username", "")
    password: Secret | None = None
    inline = r.table.string("password", "")
    env_name = r.table.string("password_env", "")
    docker_config = r.table.string("docker_config", "")
    given = [k for k, v in (("password", inline), ("password_env", env_name), ("docker_config", docker_config)) if v]
    if len(given) > 1:
        raise r.error(f"give only one of password, password_env, docker_config (also {given[0]})", given[1])
    if inline:
        password = Secret(inline)
    elif env_name:
        if env_name not in os.environ:
            raise r.error(f"environment variable {env_name} is not set", "password_env")
        password = Secret(os.environ[env_name])
    elif docker_config:
        username, password = _docker_config_password(r, r.earlier["name"], docker_config)
    if password is not None and not username:
        raise r.error("is required with a password", "username")
    if username and password is None:
        raise r.error("is given without a password; add password_env, password or docker_config", "username")
    return {
        "username": username,
        "password": password,
        # Named in error messages that say what to fix; never the password itself.
        "credentials_from": (
            f"password_env {env_name}"
            if env_name
            else f"docker_config {docker_config}"
            if docker_config
            else "password in the config"
            if inline
            else ""
        ),
    }


def _repository_prefix(r: Reading) -> str:
    prefix = r.table.string(r.key, "").strip("/")
    if prefix and not _REPOSITORY_PATH.fullmatch(prefix):
        raise r.error(f"{prefix!r} is not a repository path such as 'dockerhub-proxy'")
    return prefix


def _push_repositories(r: Reading) -> tuple[str, ...]:
    values = []
    for i, entry in enumerate(r.table.get(r.key, list, [])):
        if not isinstance(entry, str) or not (entry == "*" or _PUSH_REPOSITORY.fullmatch(entry)):
            raise r.error(
                f"{entry!r} is not a repository: use a name ('team/frozen'), a prefix ('team/*') or '*'",
                f"{r.key}[{i}]",
            )
        values.append(entry)
    return tuple(values)


@dataclass(frozen=True, slots=True)
class RegistryRoute(Validated):
    name: str = setting("", read=_name)
    endpoint: str = setting("", read=_endpoint)
    # redirect: runtimes fetch base blobs from the registry; proxy: streamed through the
    # gateway on every pull; cache: fetched once into [cache].store and served from there.
    blobs: Literal["redirect", "proxy", "cache"] = setting("redirect", read=choice("redirect", "proxy", "cache"))
    # Read with password, password_env or docker_config (which may name the user too).
    username: str = filled_by_reader("", _credentials)
    password: Secret | None = field(default=None, repr=False)
    connect_timeout: timedelta = setting(
        timedelta(seconds=10), default_from=lambda tree: tree["upstream"].connect_timeout
    )
    read_timeout: timedelta = setting(timedelta(seconds=60), default_from=lambda tree: tree["upstream"].read_timeout)
    # A mirror that serves this registry's names under a path (a Harbor proxy-cache
    # project, an Artifactory remote repo): "dockerhub" maps library/alpine to
    # dockerhub/library/alpine upstream. Clients never see the prefix.
    repository_prefix: str = setting("", read=_repository_prefix)
    # Where the password came from ("password_env FOO", "docker_config PATH"), for
    # error messages that say what to fix; never the password itself.
    credentials_from: str = ""
    # A PEM bundle to verify this registry's certificate (a private CA), and the
    # escape hatch for a registry whose certificate cannot be verified at all.
    ca_file: str = setting("", read=readable_file)
    tls_verify: bool = setting(True)
    # False for the route made up for a registry no [[registries]] entry names: the
    # address policy then lets it (and its realm and redirects) reach public addresses only.
    listed: bool = True
    # Repositories a freeze may push to with this entry's credentials: a name, or a
    # prefix ending in "/*" ("team/*"), or "*" for any. Empty: no pushes. Pushes are
    # opt-in because the service would push for any caller with the operator's credentials.
    push_repositories: tuple[str, ...] = setting((), read=_push_repositories)
    # False: an image from this registry may be frozen only into this same registry. A freeze
    # reads the source with this entry's credentials and pushes it where the target allows,
    # which may be readable by people who cannot read this registry.
    freeze_to_other_registries: bool = setting(True)
    # This registry's own egress proxy ("http://user@host:port", "env"), or "direct" for none;
    # "" takes [upstream].proxy (wave_grpc/config/egress.py).
    proxy: str = setting("")
    proxy_password_env: str = setting("")

    def check_together(self) -> None:
        egress_proxy(self.proxy, self.proxy_password_env, (), where=f"[[registries]] {self.name!r}")

    def allows_push(self, repository: str) -> bool:
        for allowed in self.push_repositories:
            if allowed == "*" or allowed == repository:
                return True
            if allowed.endswith("/*") and repository.startswith(allowed[:-1]):
                return True
        return False

    @property
    def has_credentials(self) -> bool:
        return self.password is not None


def read_routes(r: Reading) -> tuple[RegistryRoute, ...]:
    """The ``[[registries]]`` array: each entry a route, no registry named twice."""
    r.table.used.add(r.key)
    data = r.table.data.get(r.key, [])
    if not isinstance(data, list):
        raise ConfigError(f"{r.table.source}: registries must be an array of tables ([[registries]])")
    routes = tuple(
        read_table(RegistryRoute, entry, f"[[registries]][{i}]", r.table.source, r.earlier)
        for i, entry in enumerate(data)
    )
    names = [route.name for route in routes]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{r.table.source}: [[registries]].name: {name!r} is listed twice")
    return routes
