"""The TOML config tree: frozen, validated values.

Every section rejects unknown keys and every error names the file and the key,
e.g. ``configs/prod.toml: [gateway].lisen: unknown key; known keys: listen, ...``.
Relative paths (``sqlite:///data/wave.db``, ``file://data/layers``) resolve against
the working directory, as SQLAlchemy URLs do.

Where things live: ``table`` reads one TOML table (value kinds, messages);
``keys`` declares a key on a dataclass field and holds the one walker;
``sections`` and ``registries`` are the sections; ``tree`` is the whole config.
A new simple key is one line in its section's dataclass.
"""

from wave_grpc.config.cache import CacheConfig
from wave_grpc.config.registries import RegistryRoute, Secret
from wave_grpc.config.sections import (
    AUTH_VERIFIERS,
    AdminConfig,
    AuthConfig,
    GatewayConfig,
    LayersConfig,
    LimitsConfig,
    ServiceConfig,
    StaticToken,
    TowerAuthConfig,
    UpstreamConfig,
)
from wave_grpc.config.table import ConfigError
from wave_grpc.config.tree import Config, default_config_path, load_config, parse_config

__all__ = [
    "AUTH_VERIFIERS",
    "AdminConfig",
    "AuthConfig",
    "CacheConfig",
    "Config",
    "ConfigError",
    "GatewayConfig",
    "LayersConfig",
    "LimitsConfig",
    "RegistryRoute",
    "Secret",
    "ServiceConfig",
    "StaticToken",
    "TowerAuthConfig",
    "UpstreamConfig",
    "default_config_path",
    "load_config",
    "parse_config",
]
