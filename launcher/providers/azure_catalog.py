"""Azure helpers without state: the SDK clients, error classification, the VM size catalog.

The azure SDKs are imported only here and in the other azure modules, so `import launcher` works
without them. The Resource Manager endpoint is `provider.resource_manager_endpoint` (default
https://management.azure.com); credentials come from azure-identity's DefaultAzureCredential
(environment service principal, workload identity, managed identity, `az login`, ...). Requests
carry the credential's bearer token through BearerPolicy below, which refuses plain http except to
a loopback host (a local emulator or proxy): tokens never travel unencrypted over a network.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from typing import Callable, Mapping
from urllib.parse import urlparse

from launcher.errors import (AuthError, CapacityError, ConfigError, InvalidNodeConfig,
                             ProviderError, QuotaError, TransientError)

DEFAULT_ENDPOINT = "https://management.azure.com"
GIB = 1024 ** 3
POLL_S = 5
TOKEN_MARGIN_S = 300  # a token this close to expiry is renewed before use

# Azure error codes by the reaction they call for (see launcher.errors).
CAPACITY_CODES = {"SkuNotAvailable", "AllocationFailed", "ZonalAllocationFailed",
                  "OverconstrainedAllocationRequest", "OverconstrainedZonalAllocationRequest",
                  "SpotMaxPriceTooLow"}
QUOTA_CODES = {"QuotaExceeded", "SpotQuotaExceeded", "LowPriorityQuotaExceeded"}
THROTTLE_CODES = {"TooManyRequests", "RetryableError", "ServerBusy", "InternalServerError",
                  "ServiceUnavailable", "InternalExecutionError"}
AUTH_CODES = {"AuthenticationFailed", "AuthorizationFailed", "InvalidAuthenticationToken",
              "InvalidAuthenticationTokenTenant", "ExpiredAuthenticationToken",
              "LinkedAuthorizationFailed", "SubscriptionNotFound", "InvalidSubscriptionId"}
NO_CREDENTIALS = ("no Azure credentials found; run `az login`, set AZURE_TENANT_ID, "
                  "AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, or run on a VM with a managed identity")

# GPU sizes: (GPU count, accelerator name). Resource SKUs report the count but not the model.
GPU_SIZES = {
    "Standard_NC4as_T4_v3": (1, "T4"), "Standard_NC8as_T4_v3": (1, "T4"),
    "Standard_NC16as_T4_v3": (1, "T4"), "Standard_NC64as_T4_v3": (4, "T4"),
    "Standard_NC6s_v3": (1, "V100"), "Standard_NC12s_v3": (2, "V100"),
    "Standard_NC24s_v3": (4, "V100"), "Standard_NC24rs_v3": (4, "V100"),
    "Standard_ND40rs_v2": (8, "V100"),
    "Standard_NC24ads_A100_v4": (1, "A100"), "Standard_NC48ads_A100_v4": (2, "A100"),
    "Standard_NC96ads_A100_v4": (4, "A100"), "Standard_ND96asr_v4": (8, "A100"),
    "Standard_ND96amsr_A100_v4": (8, "A100"),
    "Standard_NV36ads_A10_v5": (1, "A10"), "Standard_NV72ads_A10_v5": (2, "A10"),
    "Standard_NC40ads_H100_v5": (1, "H100"), "Standard_NC80adis_H100_v5": (2, "H100"),
    "Standard_ND96isr_H100_v5": (8, "H100"), "Standard_ND96isr_H200_v5": (8, "H200"),
    "Standard_ND96isr_MI300X_v5": (8, "MI300X"),
}


# The SDKs log failures (e.g. every credential of the chain, on many lines) that the launcher
# reports as one line itself; without this, Python's last-resort handler prints them to stderr.
# Processes that configure logging (the head's autoscaler) still get them.
logging.getLogger("azure").addHandler(logging.NullHandler())


def endpoint_of(provider: Mapping) -> str:
    """provider.resource_manager_endpoint, checked: https, or http to a loopback host only."""
    endpoint = provider.get("resource_manager_endpoint", DEFAULT_ENDPOINT).rstrip("/")
    parsed = urlparse(endpoint)
    if parsed.scheme == "https" and parsed.hostname:
        return endpoint
    if parsed.scheme == "http" and _is_loopback(parsed.hostname):
        return endpoint
    raise ConfigError(f"provider.resource_manager_endpoint: {endpoint!r} must be an https URL "
                      "(plain http only to a loopback address such as a local emulator)")


def _is_loopback(host) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def bearer_policy(credential, scope: str):
    """A pipeline policy that adds the credential's bearer token to every request, renewed before
    it expires. The SDK's own policy refuses any http URL; this one allows http to loopback hosts
    only (a local emulator or proxy)."""
    from azure.core.pipeline.policies import SansIOHTTPPolicy

    class BearerPolicy(SansIOHTTPPolicy):
        def __init__(self):
            self._token = None
            self._lock = threading.Lock()

        def on_request(self, request) -> None:
            url = urlparse(request.http_request.url)
            if url.scheme != "https" and not _is_loopback(url.hostname):
                raise ProviderError(f"refusing to send an Azure token over plain http to "
                                    f"{url.hostname}")
            with self._lock:
                if self._token is None or self._token.expires_on - TOKEN_MARGIN_S < time.time():
                    self._token = credential.get_token(scope)
                token = self._token.token
            request.http_request.headers["Authorization"] = f"Bearer {token}"

    return BearerPolicy()


class Clients:
    """The resource, network and compute clients of one subscription, created on first use."""

    def __init__(self, provider: Mapping):
        self.endpoint = endpoint_of(provider)
        self.subscription = provider["subscription_id"]
        self._provider = provider
        self._made: dict = {}
        self._lock = threading.Lock()

    def _client(self, name: str):
        with self._lock:
            if name not in self._made:
                self._made[name] = self._make(name)
            return self._made[name]

    def _make(self, name: str):
        try:
            from azure.identity import DefaultAzureCredential
        except ImportError:
            raise ConfigError("provider.type: azure needs the Azure SDKs; pip install "
                              "'cluster-launcher[azure]'") from None
        if "credential" not in self._made:
            self._made["credential"] = DefaultAzureCredential(
                managed_identity_client_id=self._provider.get("managed_identity_client_id"))
            scope = self._provider.get("credential_scope", f"{self.endpoint}/.default")
            self._made["policy"] = bearer_policy(self._made["credential"], scope)
        if name == "compute":
            from azure.mgmt.compute import ComputeManagementClient as client_class
        elif name == "network":
            from azure.mgmt.network import NetworkManagementClient as client_class
        else:
            from azure.mgmt.resource.resources import ResourceManagementClient as client_class
        return client_class(self._made["credential"], self.subscription, base_url=self.endpoint,
                            authentication_policy=self._made["policy"],
                            polling_interval=POLL_S)  # when a response gives no Retry-After

    @property
    def compute(self):
        return self._client("compute")

    @property
    def network(self):
        return self._client("network")

    @property
    def resource(self):
        return self._client("resource")


def error_code(exc: Exception) -> str:
    error = getattr(exc, "error", None)
    return getattr(error, "code", None) or ""


def classify(exc: Exception, what: str) -> ProviderError:
    """An azure-core error as the launcher's typed error, in one line naming the Azure code."""
    from azure.core.exceptions import (ClientAuthenticationError, HttpResponseError,
                                       ServiceRequestError)

    if isinstance(exc, ClientAuthenticationError) and exc.response is None:
        return AuthError(f"{what}: {NO_CREDENTIALS}")
    if isinstance(exc, HttpResponseError):
        code = error_code(exc) or f"HTTP {exc.status_code}"
        message = getattr(getattr(exc, "error", None), "message", None) or exc.reason or ""
        line = " ".join(f"{what}: {code}: {message}".split())
        if code in CAPACITY_CODES:
            return CapacityError(line)
        if code in QUOTA_CODES or (code == "OperationNotAllowed" and "quota" in line.lower()):
            return QuotaError(line)
        if code in THROTTLE_CODES or exc.status_code in (429, 500, 502, 503, 504):
            return TransientError(line)
        if code in AUTH_CODES or exc.status_code in (401, 403):
            return AuthError(line)
        if code.startswith("Invalid") or code.endswith("NotFound") or exc.status_code == 400:
            return InvalidNodeConfig(line)
        return ProviderError(line)
    if isinstance(exc, ServiceRequestError):
        return TransientError(f"{what}: cannot reach the Azure Resource Manager: "
                              f"{' '.join(str(exc).split())[:200]}")
    return ProviderError(f"{what}: {type(exc).__name__}: {' '.join(str(exc).split())}")


def azure_call(call: Callable, what: str, *args, **kwargs):
    """Call an SDK method (and wait for it, when it starts a long-running operation); every error
    is raised classified. Throttling (429, 5xx) is retried by the SDK, honouring Retry-After."""
    from azure.core.exceptions import AzureError

    try:
        result = call(*args, **kwargs)
        return result.result() if hasattr(result, "polling_method") else result
    except AzureError as exc:
        raise classify(exc, what) from None


def is_not_found(exc: ProviderError) -> bool:
    return isinstance(exc, InvalidNodeConfig) and "NotFound" in str(exc)


def size_resources(sku: Mapping) -> dict[str, float]:
    """Resources of one VM size: CPU, GPU and accelerator_type:<GPU> (from GPU_SIZES, else the
    SKU's GPU count), memory (70% of RAM, like Ray: the rest is for the OS and objects)."""
    capabilities = sku["capabilities"]
    resources: dict[str, float] = {"CPU": int(float(capabilities.get("vCPUs", 0)))}
    gpus, accelerator = GPU_SIZES.get(sku["name"], (int(float(capabilities.get("GPUs", 0))), None))
    if gpus:
        resources["GPU"] = gpus
    if accelerator:
        resources[f"accelerator_type:{accelerator}"] = 1
    resources["memory"] = int(float(capabilities.get("MemoryGB", 0)) * GIB * 0.7)
    return resources


def catalog(clients: Clients, location: str) -> dict[str, dict]:
    """VM size name -> {"capabilities", "zones", "restricted"} offered in `location`: zones where
    it exists, and why it is not offered to this subscription (None when it is)."""
    skus = azure_call(lambda: list(clients.compute.resource_skus.list(
        filter=f"location eq '{location}'")), "listing VM sizes")
    sizes = {}
    for sku in skus:
        if sku.resource_type != "virtualMachines":
            continue
        zones = [z for info in sku.location_info or [] if info.location.lower() == location.lower()
                 for z in info.zones or []]
        restricted = next((getattr(r.reason_code, "value", r.reason_code) or "restricted"
                           for r in sku.restrictions or [] if r.type == "Location"), None)
        sizes[sku.name] = {"name": sku.name, "zones": zones, "restricted": restricted,
                           "capabilities": {c.name: c.value for c in sku.capabilities or []},
                           "zone_restricted": [z for r in sku.restrictions or [] if r.type == "Zone"
                                               for z in (r.restriction_info.zones or [])]}
    return sizes
