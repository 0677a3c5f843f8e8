"""AWS helpers without state: the EC2 client, error classification, the instance catalog.

boto3 is imported only here and in the other aws modules, so `import launcher` works without it.
The endpoint, region and credentials come from boto3's own settings (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_PROFILE, instance profiles, ...): the provider has no endpoint option of its
own, so tests point it at moto exactly as a user would point it at any EC2-compatible endpoint.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

from launcher.errors import (AuthError, CapacityError, ConfigError, InvalidNodeConfig,
                             ProviderError, QuotaError, TransientError)

MIB = 1024 * 1024
THROTTLE_RETRIES = 5
THROTTLE_BASE_S = 0.5

# AWS error codes by the reaction they call for (see launcher.errors).
CAPACITY_CODES = {"InsufficientInstanceCapacity", "Unsupported", "InsufficientHostCapacity",
                  "InsufficientCapacity", "SpotMaxPriceTooLow"}
QUOTA_CODES = {"VcpuLimitExceeded", "MaxSpotInstanceCountExceeded", "InstanceLimitExceeded",
               "InsufficientFreeAddressesInSubnet"}
THROTTLE_CODES = {"RequestLimitExceeded", "Throttling", "ThrottlingException",
                  "TooManyRequestsException", "ServiceUnavailable", "InternalError"}
AUTH_CODES = {"AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "ExpiredToken",
              "SignatureDoesNotMatch", "OptInRequired", "AccessDenied", "AccessDeniedException"}


def ec2_client(region: str, service: str = "ec2"):
    """A client for `service` in `region`; the region is checked against botocore's own list so a
    typo fails here, before any request leaves. A broken profile (AWS_PROFILE naming none, an
    unreadable ~/.aws/config) already fails here, so this is classified like any call."""
    import boto3
    import botocore
    import botocore.config

    try:
        session = boto3.session.Session()
        known = set(session.get_available_regions("ec2")) | set(
            session.get_available_regions("ec2", partition_name="aws-us-gov"))
        if region not in known:
            raise ConfigError(f"provider.region: unknown AWS region {region!r} (if it is new, "
                              f"upgrade boto3: botocore {botocore.__version__} does not know it)")
        retries = {"max_attempts": 2, "mode": "standard"}  # throttling is retried by aws_call
        config = botocore.config.Config(retries=retries, connect_timeout=10, read_timeout=60)
        return session.client(service, region_name=region, config=config)
    except aws_errors() as exc:
        raise classify(exc, f"creating the {service} client for {region}") from None


def aws_errors() -> tuple[type[Exception], ...]:
    """Every exception boto3 and botocore raise. ResponseParserError (an answer that is not AWS's
    XML or JSON, e.g. an endpoint's HTML error page) derives from neither ClientError nor
    BotoCoreError, and boto3's own errors derive from Boto3Error."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError
    from botocore.parsers import ResponseParserError

    return ClientError, BotoCoreError, ResponseParserError, Boto3Error


def error_code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "") or type(exc).__name__


def classify(exc: Exception, what: str) -> ProviderError:
    """A boto3/botocore error as the launcher's typed error, in one line naming the AWS error code
    (or the exception's class) after `what`."""
    from botocore.exceptions import (ClientError, ConnectionError, CredentialRetrievalError,
                                     HTTPClientError, NoCredentialsError, NoRegionError,
                                     ParamValidationError, PartialCredentialsError,
                                     ProfileNotFound, SSOError, TokenRetrievalError)

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return AuthError(f"{what}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run on an instance with a role")
    if isinstance(exc, NoRegionError):
        return ConfigError("provider.region: missing")
    if isinstance(exc, ClientError):
        code = error_code(exc)
        line = f"{what}: {code}: {_one_line(exc.response.get('Error', {}).get('Message', ''))}"
        for codes, kind in ((CAPACITY_CODES, CapacityError), (QUOTA_CODES, QuotaError),
                            (THROTTLE_CODES, TransientError), (AUTH_CODES, AuthError)):
            if code in codes:
                return kind(line)
        if code.startswith(("Invalid", "MissingParameter")) or code.endswith("NotFound"):
            return InvalidNodeConfig(line)
        return ProviderError(line)
    line = f"{what}: {type(exc).__name__}: {_one_line(str(exc))}"
    for kinds, kind in (((ProfileNotFound, CredentialRetrievalError, SSOError,
                          TokenRetrievalError), AuthError),
                        ((ParamValidationError,), InvalidNodeConfig),
                        ((ConnectionError, HTTPClientError), TransientError)):  # retried
        if isinstance(exc, kinds):
            return kind(line)
    return ProviderError(line)  # e.g. ResponseParserError, WaiterError: retrying will not help


def _one_line(text: str, limit: int = 400) -> str:
    """Whitespace collapsed and cut: a ResponseParserError carries the whole unparsable body."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def aws_call(method: Callable, what: str, sleep: Callable[[float], None] = time.sleep, **kwargs):
    """Call a client method; throttling and connection errors are retried with exponential
    backoff, every other error is raised classified (see classify) as one line naming `what` and
    the API call (the method's name in the API's spelling: run_instances -> RunInstances)."""
    what = f"{what} ({''.join(word.title() for word in method.__name__.split('_'))})"
    for attempt in range(THROTTLE_RETRIES + 1):
        try:
            return method(**kwargs)
        except aws_errors() as exc:
            error = classify(exc, what)
            if not isinstance(error, TransientError) or attempt == THROTTLE_RETRIES:
                raise error from None
            sleep(THROTTLE_BASE_S * 2 ** attempt)
    raise AssertionError("unreachable")


def instance_resources(info: Mapping) -> dict[str, float]:
    """Resources of one describe_instance_types entry: CPU, GPU, accelerator_type:<GPU>, memory."""
    resources: dict[str, float] = {"CPU": info["VCpuInfo"]["DefaultVCpus"]}
    gpus = info.get("GpuInfo", {}).get("Gpus", [])
    if gpus:
        resources["GPU"] = sum(g.get("Count", 0) for g in gpus)
        for gpu in gpus:
            resources[f"accelerator_type:{gpu['Name']}"] = 1
    # Like Ray: 70% of the machine's memory is schedulable, the rest is for the OS and objects.
    resources["memory"] = int(info["MemoryInfo"]["SizeInMiB"] * MIB * 0.7)
    return resources


def catalog(client, instance_types: list[str], what: str) -> dict[str, dict]:
    """instance type -> resources, for the given types (an unknown type fails naming it)."""
    found = {}
    paginator = client.get_paginator("describe_instance_types")

    def describe_instance_types(**kwargs):  # every page; aws_call names the API after it
        return list(paginator.paginate(**kwargs))

    for page in aws_call(describe_instance_types, what, InstanceTypes=sorted(set(instance_types))):
        for info in page["InstanceTypes"]:
            found[info["InstanceType"]] = instance_resources(info)
    return found
