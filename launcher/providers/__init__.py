"""Providers by name. Each lives in its own module, imported only when used, so a cloud's SDK is
needed only by clusters on that cloud."""

from __future__ import annotations

import importlib
from typing import Mapping, Optional

from launcher.errors import ConfigError
from launcher.providers.base import NodeProvider

_PROVIDERS = {
    "local": "launcher.providers.local:LocalNodeProvider",
    "ssh": "launcher.providers.ssh:SSHNodeProvider",
    "aws": "launcher.providers.aws:AWSNodeProvider",
    "gcp": "launcher.providers.gcp:GCPNodeProvider",
    "azure": "launcher.providers.azure:AzureNodeProvider",
}


def make_provider(provider_config: Mapping, cluster_name: str,
                  auth: Optional[Mapping] = None) -> NodeProvider:
    """The provider named by provider_config["type"], for this cluster; `auth` is the config's
    auth section, for providers whose nodes are reached over SSH."""
    name = provider_config.get("type")
    if not isinstance(name, str) or name not in _PROVIDERS:
        raise ConfigError(
            f"provider.type: unknown provider {name!r} (expected one of: {', '.join(_PROVIDERS)})"
        )
    module_name, class_name = _PROVIDERS[name].split(":")
    provider_class = getattr(importlib.import_module(module_name), class_name)
    return provider_class(provider_config, cluster_name, auth)
