"""What is derived from the route table (gateway/routes.py) follows it: the Wave hint and the untokened-name match."""

from __future__ import annotations

import pytest

from gateway.errors import is_registry_path
from gateway.routes import ROUTES, WAVE_ROUTES_HINT, shown_path, untokened_name


def test_the_wave_hint_names_every_wave_route_with_its_method() -> None:
    listed = {item.split(" ", 1)[1]: set(item.split(" ", 1)[0].split("|")) for item in WAVE_ROUTES_HINT.split(", ")}
    wave_routes = [route for route in ROUTES if not is_registry_path(route.path)]
    assert wave_routes
    for route in wave_routes:
        assert route.method in listed[shown_path(route.path)]
    assert "POST /v1alpha1/inspect" in WAVE_ROUTES_HINT
    assert "GET /v1alpha2/container/<requestId>/status" in WAVE_ROUTES_HINT
    assert "GET|DELETE /container-token/<token>" in WAVE_ROUTES_HINT
    assert "/v2" not in WAVE_ROUTES_HINT


@pytest.mark.parametrize("family", ["manifests/latest", "blobs/sha256:abc", "tags/list", "referrers/sha256:abc"])
def test_every_tokened_family_asked_without_a_token_is_named(family: str) -> None:
    assert untokened_name(f"/v2/library/busybox/{family}") == "library/busybox"
    assert untokened_name(f"/v2/wt/abcdefabcdef/library/busybox/{family}") is None


def test_paths_outside_the_registry_families_are_not_names() -> None:
    assert untokened_name("/v2/library/busybox/uploads/") is None
    assert untokened_name("/v2/") is None
