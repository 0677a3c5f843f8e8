"""GCP helpers: the Compute Engine clients of a project, error classification, operations, the
machine type catalog.

google-cloud-compute and google-auth are imported only here and in the other gcp modules, so
`import launcher` works without them. Credentials come from Ray's provider.gcp_credentials when
given, else from google-auth's Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS,
`gcloud auth application-default login`, the metadata server of a GCE VM); the endpoint is
provider.api_endpoint (default the public one).

Operations are polled through this module's own operations clients, built with the same endpoint:
the SDK's `insert(...).result()` would poll through a client of its own, on the public endpoint.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable, Iterable, Mapping, Optional

from launcher.errors import (AuthError, CapacityError, ConfigError, InvalidNodeConfig,
                             ProviderError, QuotaError, TransientError)

PUBLIC_ENDPOINT = "https://compute.googleapis.com"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
MIB = 1024 * 1024
RETRIES = 5
RETRY_BASE_S = 0.5
OPERATION_TIMEOUT_S = 900.0
NO_CREDENTIALS = ("no GCP credentials found; run `gcloud auth application-default login`, set "
                  "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run on a GCE "
                  "VM with a service account")

# Error codes (operation errors) and reasons (HTTP errors) by the reaction they call for.
CAPACITY_CODES = {"ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
                  "UNSUPPORTED_OPERATION", "resourcePoolExhausted"}
QUOTA_CODES = {"QUOTA_EXCEEDED", "quotaExceeded"}
THROTTLE_CODES = {"RESOURCE_OPERATION_RATE_EXCEEDED", "rateLimitExceeded",
                  "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED", "backendError", "internalError"}
# HTTP statuses: throttled or failing server side, refused credentials.
THROTTLE_STATUSES = {429, 500, 502, 503, 504}
AUTH_STATUSES = {401, 403}

# google-auth logs each failed metadata-server probe as a warning; the AuthError says it in one
# line. To debug credentials, set propagate back to True and configure logging.
logging.getLogger("google.auth").addHandler(logging.NullHandler())
logging.getLogger("google.auth").propagate = False


class Compute:
    """The Compute Engine clients of one project, sharing credentials and the endpoint.

    Thread-safe: the autoscaler sets nodes up in parallel. Every request goes through call() or
    items(), which retry throttling and raise the launcher's typed errors.
    """

    def __init__(self, project: str, endpoint: Optional[str] = None,
                 sleep: Callable[[float], None] = time.sleep,
                 credentials: Optional[Mapping] = None):
        self.project = project
        self.endpoint = _checked(endpoint or PUBLIC_ENDPOINT)
        self.sleep = sleep
        self._given = credentials  # Ray's provider.gcp_credentials
        self._credentials = None
        self._clients: dict[str, object] = {}
        self._lock = threading.Lock()

    def client(self, name: str):
        """compute_v1.<name>Client, e.g. client("Instances")."""
        with self._lock:
            if name not in self._clients:
                from google.api_core.client_options import ClientOptions
                from google.cloud import compute_v1

                if self._credentials is None:
                    self._credentials = (_given_credentials(self._given) if self._given
                                         else _default_credentials())
                self._clients[name] = getattr(compute_v1, f"{name}Client")(
                    credentials=self._credentials,
                    client_options=ClientOptions(api_endpoint=self.endpoint))
            return self._clients[name]

    def call(self, client: str, method: str, what: str, **kwargs):
        """client(client).method(project=<this project>, **kwargs), retried and classified."""
        kwargs.setdefault("project", self.project)
        return self._retried(lambda: getattr(self.client(client), method)(**kwargs), what)

    def items(self, client: str, method: str, what: str, **kwargs) -> list:
        """Every item of a list call (its request given as keywords, e.g. filter), all pages
        fetched (and retried) here."""
        request = {"project": self.project, **kwargs}
        return self._retried(lambda: list(getattr(self.client(client), method)(request=request)),
                             what)

    def _retried(self, request: Callable, what: str):
        """Throttling is retried with exponential backoff, every other error raised classified
        (see classify)."""
        for attempt in range(RETRIES + 1):
            try:
                return request()
            except ProviderError:
                raise
            except Exception as exc:
                error = classify(exc, what)
                if not isinstance(error, TransientError) or attempt == RETRIES:
                    raise error from None
                self.sleep(RETRY_BASE_S * 2 ** attempt)
        raise AssertionError("unreachable")

    def wait(self, operation, what: str):
        """Poll a zonal, regional or global operation until it is done; raise its error, if any,
        classified by its code (ZONE_RESOURCE_POOL_EXHAUSTED: CapacityError, ...)."""
        from google.cloud import compute_v1

        if operation.zone:
            client, scope = "ZoneOperations", {"zone": base_name(operation.zone)}
        elif operation.region:
            client, scope = "RegionOperations", {"region": base_name(operation.region)}
        else:
            client, scope = "GlobalOperations", {}
        deadline = time.monotonic() + OPERATION_TIMEOUT_S
        while operation.status != compute_v1.Operation.Status.DONE:
            if time.monotonic() > deadline:
                raise TransientError(f"{what}: operation {operation.name} still not done after "
                                     f"{OPERATION_TIMEOUT_S:.0f} s")
            operation = self.call(client, "wait", what, operation=operation.name, **scope)
        errors = [(e.code, e.message) for e in operation.error.errors]
        if errors:
            raise classify_codes([code for code, _ in errors], None,
                                 f"{what}: {errors[0][0]}: {' '.join(errors[0][1].split())}")
        return operation


def _checked(endpoint: str) -> str:
    """provider.api_endpoint; plain http only to this machine, as tokens would travel in clear."""
    import ipaddress
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    try:
        loopback = ipaddress.ip_address(url.hostname or "").is_loopback
    except ValueError:
        loopback = url.hostname == "localhost"
    if url.scheme != "https" and not (url.scheme == "http" and loopback):
        raise ConfigError(f"provider.api_endpoint: {endpoint!r}: expected an https:// URL "
                          "(plain http only to this machine)")
    return endpoint


def _default_credentials():
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM])
    except DefaultCredentialsError as exc:
        detail = " ".join(str(exc).split())
        is_missing = "default credentials were not found" in detail.lower()
        raise AuthError(NO_CREDENTIALS if is_missing else f"GCP credentials: {detail}") from None
    return credentials


def _given_credentials(given: Mapping):
    """Ray's provider.gcp_credentials: {type: service_account, credentials: <the key file's
    JSON>} or {type: credentials_token, credentials: <an OAuth 2.0 access token>}."""
    from google.oauth2 import credentials, service_account

    if given["type"] == "credentials_token":
        return credentials.Credentials(given["credentials"])
    try:
        return service_account.Credentials.from_service_account_info(
            json.loads(given["credentials"]), scopes=[CLOUD_PLATFORM])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError("provider.gcp_credentials.credentials: not a service account's JSON "
                          f"key ({' '.join(str(exc).split())})") from None


def classify_codes(codes: Iterable[str], status: Optional[int], line: str) -> ProviderError:
    """The launcher's error for GCP error codes/reasons and an HTTP status."""
    codes = set(codes)
    for known, kind in ((CAPACITY_CODES, CapacityError), (QUOTA_CODES, QuotaError),
                        (THROTTLE_CODES, TransientError)):
        if codes & known:
            return kind(line)
    if status in THROTTLE_STATUSES:
        return TransientError(line)
    if status in AUTH_STATUSES:
        return AuthError(line)
    if status in (400, 404) or any(c.startswith(("INVALID", "RESOURCE_NOT_FOUND")) for c in codes):
        return InvalidNodeConfig(line)
    return ProviderError(line)


def classify(exc: Exception, what: str) -> ProviderError:
    """An SDK, auth or transport error as the launcher's typed error, in one line naming the GCP
    error reason (or HTTP status)."""
    import requests
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    if isinstance(exc, auth.RefreshError):
        return AuthError(f"{what}: GCP credentials refused: {_one_line(exc)}")
    if isinstance(exc, auth.DefaultCredentialsError):
        return AuthError(NO_CREDENTIALS)
    if isinstance(exc, (auth.TransportError, requests.RequestException, api.RetryError)):
        return TransientError(f"{what}: {_one_line(exc)}")
    if isinstance(exc, api.GoogleAPICallError):
        reasons = [e.get("reason", "") for e in exc.errors or () if isinstance(e, dict)]
        reasons = [r for r in [exc.reason or "", *reasons] if r]
        message = exc.message.split(": ", 1)[-1] if exc.message.startswith(
            ("GET ", "POST ", "DELETE ", "PUT ", "PATCH ")) else exc.message
        line = f"{what}: {reasons[0] if reasons else exc.code}: {' '.join(message.split())}"
        return classify_codes(reasons, exc.code, line)
    return ProviderError(f"{what}: {type(exc).__name__}: {_one_line(exc)}")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def has_reason(error: ProviderError, reason: str) -> bool:
    """Whether the error's line names this GCP reason (e.g. notFound, conditionNotMet)."""
    return f": {reason}:" in str(error)


def base_name(value: str) -> str:
    """The name at the end of a (partial) resource URL: zones/z/machineTypes/n2 -> n2."""
    return value.rsplit("/", 1)[-1]


def gpu_name(accelerator_type: str) -> str:
    """The accelerator_type resource name of a GCP accelerator: nvidia-tesla-t4 -> T4,
    nvidia-l4 -> L4, nvidia-h100-80gb -> H100, nvidia-a100-80gb -> A100-80G (as Ray names it)."""
    name = base_name(accelerator_type)
    if name == "nvidia-a100-80gb":
        return "A100-80G"
    return name.removeprefix("nvidia-").removeprefix("tesla-").split("-")[0].upper()


def machine_resources(machine_type, extra_gpus: Iterable[tuple[str, int]] = ()) -> dict:
    """Resources of one machineTypes.get result, with the guestAccelerators the node_config adds:
    CPU, GPU, accelerator_type:<GPU>, memory (70% of RAM, like Ray: the rest is for the OS)."""
    resources: dict[str, float] = {"CPU": machine_type.guest_cpus}
    gpus = [(a.guest_accelerator_type, a.guest_accelerator_count)
            for a in machine_type.accelerators] + list(extra_gpus)
    if gpus:
        resources["GPU"] = sum(count for _, count in gpus)
        for name, _ in gpus:
            resources[f"accelerator_type:{gpu_name(name)}"] = 1
    resources["memory"] = int(machine_type.memory_mb * MIB * 0.7)
    return resources
