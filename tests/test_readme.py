"""The README holds together: its links resolve inside the repository, its contents list every
section, and its configuration reference is the config the code reads, defaults included."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from wave_grpc.config import Config
from wave_grpc.config.cache import CacheConfig
from wave_grpc.config.keys import keyed_fields
from wave_grpc.config.oidc import OidcIssuerConfig
from wave_grpc.config.registries import RegistryRoute
from wave_grpc.config.sections import (
    AdminConfig,
    AuthConfig,
    GatewayConfig,
    LayersConfig,
    LimitsConfig,
    ServiceConfig,
    TowerAuthConfig,
    UpstreamConfig,
)
from wave_grpc.config.tree import parse_config

_ROOT = Path(__file__).resolve().parent.parent
_README = _ROOT / "README.md"
_FENCE = re.compile(r"^(```|~~~)")


def _prose_lines() -> Iterator[str]:
    """The README's lines outside fenced code blocks (a TOML comment there is no heading)."""
    fenced = False
    for line in _README.read_text().splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def _headings() -> list[tuple[int, str]]:
    found = []
    for line in _prose_lines():
        match = re.match(r"^(#{1,6}) (.+?)\s*#*\s*$", line)
        if match:
            found.append((len(match[1]), match[2]))
    return found


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors() -> set[str]:
    """Every heading's anchor; a repeated one gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    anchors = set()
    for _, heading in _headings():
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _link_targets() -> list[str]:
    text = "\n".join(_prose_lines())
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_every_anchor_link_names_a_heading() -> None:
    anchors = _anchors()
    links = [target[1:] for target in _link_targets() if target.startswith("#")]
    assert links, "no anchor links found in README.md"
    assert sorted({link for link in links if link not in anchors}) == []


def test_the_contents_list_every_section() -> None:
    """Each level-2 section is linked from the table of contents, which comes first."""
    headings = _headings()
    assert headings[1] == (2, "Contents"), headings[:2]
    text = _README.read_text()
    contents = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"\]\(#([^)]+)\)", contents))
    sections = {_slug(heading) for level, heading in headings if level == 2 and heading != "Contents"}
    assert sorted(sections - listed) == []


def test_the_readme_stays_inside_the_repository() -> None:
    """Relative links name files of this repository; nothing points at a file outside it."""
    for target in _link_targets():
        if target.startswith(("#", "http://", "https://")):
            continue
        path = target.split("#", 1)[0]
        resolved = (_ROOT / path).resolve()
        assert resolved.is_relative_to(_ROOT), f"README.md links {target}, outside the repository"
        assert resolved.exists(), f"README.md links {target}, which is not in the repository"
    text = _README.read_text()
    # The planning repository's files (its design contract) are not shipped with this one.
    for outside in ("shared/", "DESIGN.md"):
        assert outside not in text, f"README.md mentions {outside!r}, which is outside the repository"


def _config_reference() -> dict[str, Any]:
    """The TOML block under "### Configuration reference"."""
    section = _README.read_text().split("### Configuration reference", 1)[1]
    block = re.search(r"^```toml\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert block, "no TOML block in the configuration reference"
    return tomllib.loads(block[1])


def _toml_keys(kind: type[Any]) -> set[str]:
    return {key.name or name for name, key in keyed_fields(kind)}


def test_the_config_reference_is_a_valid_config_with_every_key() -> None:
    reference = _config_reference()
    parse_config(reference, "README.md")  # every key known, every value valid
    tables: list[tuple[type[Any], Mapping[str, Any]]] = [
        (Config, reference),
        (ServiceConfig, reference["service"]),
        (GatewayConfig, reference["gateway"]),
        (LayersConfig, reference["layers"]),
        (UpstreamConfig, reference["upstream"]),
        (AdminConfig, reference["admin"]),
        (LimitsConfig, reference["limits"]),
        (AuthConfig, reference["auth"]),
        (TowerAuthConfig, reference["auth"]["tower"]),
        (OidcIssuerConfig, reference["auth"]["oidc"][0]),
        (RegistryRoute, reference["registries"][0]),
        (CacheConfig, reference["cache"]),
    ]
    for kind, table in tables:
        assert sorted(_toml_keys(kind) - set(table)) == [], f"{kind.__name__} keys missing from the reference"


def test_the_config_reference_shows_the_defaults() -> None:
    """Every section but the examples ([[registries]], [[auth.oidc]]) is the config of an empty file."""
    reference = _config_reference()
    reference.pop("registries")
    reference["auth"].pop("oidc")
    documented, defaults = parse_config(reference, "README.md"), parse_config({}, "defaults")
    for section in fields(Config):
        if section.name in ("source", "registries"):
            continue
        assert getattr(documented, section.name) == getattr(defaults, section.name), section.name
