"""What the clouds' own CLIs were set up with, as Ray falls back on it: the Azure CLI's default
subscription (`az account set`) and the gcloud CLI's default project (`gcloud config set
project`), for configs that leave provider.subscription_id or provider.project_id out."""

from __future__ import annotations

import configparser
import json
import os
from pathlib import Path
from typing import Optional


def azure_subscription() -> Optional[str]:
    """$AZURE_SUBSCRIPTION_ID, else the Azure CLI's default subscription."""
    return os.environ.get("AZURE_SUBSCRIPTION_ID") or _azure_cli_default()


def gcp_project() -> Optional[str]:
    """$GOOGLE_CLOUD_PROJECT, else the gcloud CLI's default project."""
    return os.environ.get("GOOGLE_CLOUD_PROJECT") or _gcloud_default()


def _azure_cli_default() -> Optional[str]:
    directory = Path(os.environ.get("AZURE_CONFIG_DIR") or Path.home() / ".azure")
    try:  # the CLI writes it with a byte-order mark
        profile = json.loads((directory / "azureProfile.json").read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return None
    return next((s.get("id") for s in profile.get("subscriptions", []) if s.get("isDefault")), None)


def _gcloud_default() -> Optional[str]:
    directory = Path(os.environ.get("CLOUDSDK_CONFIG") or Path.home() / ".config" / "gcloud")
    try:
        active = (directory / "active_config").read_text().strip() or "default"
    except OSError:
        active = "default"
    parser = configparser.ConfigParser()
    parser.read(directory / "configurations" / f"config_{active}")
    return parser.get("core", "project", fallback=None)
