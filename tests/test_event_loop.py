"""``[gateway] event_loop``: the serving processes' event loop, checked when the config is read."""

from __future__ import annotations

import asyncio

import pytest

from wave_grpc.config import ConfigError, parse_config
from wave_grpc.serving import loop_factory


def test_the_default_is_the_standard_loop() -> None:
    config = parse_config({}, "<test>")
    assert config.gateway.event_loop == "asyncio"
    assert loop_factory(config) is None


def test_an_unknown_loop_is_refused_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"event_loop.*'asyncio', 'uvloop'"):
        parse_config({"gateway": {"event_loop": "trio"}}, "<test>")


def test_uvloop_makes_uvloop_loops() -> None:
    # uvloop is in the test extras: the suite checks the loop it offers, never skips it.
    factory = loop_factory(parse_config({"gateway": {"event_loop": "uvloop"}}, "<test>"))
    assert factory is not None
    loop = factory()
    try:
        assert type(loop).__module__.startswith("uvloop")
        assert loop.run_until_complete(asyncio.sleep(0, "ran")) == "ran"
    finally:
        loop.close()
