"""Typed application keys: the resources ``create_app`` opens and closes."""

from __future__ import annotations

from aiohttp import web

from gateway.resolver import TokenResolver
from wave_grpc.config import Config
from wave_grpc.layerstore import LayerStore
from wave_grpc.upstream import RegistryClient

CONFIG = web.AppKey("config", Config)
RESOLVER = web.AppKey("resolver", TokenResolver)
UPSTREAM = web.AppKey("upstream", RegistryClient)
LAYERS = web.AppKey("layers", LayerStore)
