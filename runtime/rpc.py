"""gRPC plumbing shared by every runtime process: token auth on every port, channel options, and
riding out a GCS restart.

Every server rejects a call whose `authorization` metadata is not the cluster token; every client
adds it. The token is compared in constant time and never logged.

A call to the GCS that fails UNAVAILABLE (the GCS is down: its supervisor restarts it within a
second or two) is sent again until the call's own timeout, or GCS_RETRY_S when it has none, has
passed; the GCS answers a repeated call as it answered the first. Calls to node agents are not
retried: a dead agent must show at once, so its work is recovered elsewhere.
"""

from __future__ import annotations

import hmac
import threading
import time
from typing import Optional

import grpc

from runtime.generated import runtime_pb2_grpc as pb_grpc

AUTH_METADATA_KEY = "authorization"
_UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
# A peer that is still starting (or restarting) is retried after 50 ms, not gRPC's default 1 s:
# otherwise one early attempt makes every process start take a second.
_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
              ("grpc.max_reconnect_backoff_ms", 500)]
GCS_RETRY_S = 30.0  # a GCS call without a timeout retries UNAVAILABLE this long
_GCS_METHODS = "/clusterrt.Gcs/"


class _TokenCheck(grpc.ServerInterceptor):
    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong cluster token")

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        for key, value in handler_call_details.invocation_metadata or ():
            if key == AUTH_METADATA_KEY and hmac.compare_digest(value.encode(), self._expected):
                return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is not None and handler.response_streaming:
            return self._deny_stream
        return self._deny_unary


class _TokenAdder(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, token: str):
        self._metadata = ((AUTH_METADATA_KEY, f"Bearer {token}"),)

    def _with_token(self, details):
        metadata = tuple(details.metadata or ()) + self._metadata
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)


class _GcsRetry(grpc.UnaryUnaryClientInterceptor):
    """Sends a GCS call again while it fails UNAVAILABLE, within the call's deadline."""

    def intercept_unary_unary(self, continuation, details, request):
        if not details.method.startswith(_GCS_METHODS):
            return continuation(details, request)
        deadline = time.monotonic() + (details.timeout if details.timeout is not None else GCS_RETRY_S)
        pause = 0.05
        while True:
            call = continuation(details, request)
            if call.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() + pause >= deadline:
                return call
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
            timeout = None if details.timeout is None else deadline - time.monotonic()
            details = _CallDetails(details.method, timeout, details.metadata, details.credentials,
                                   details.wait_for_ready, details.compression)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def make_server(token: str, max_workers: int = 32) -> grpc.Server:
    """A server that owns its port: without SO_REUSEPORT (gRPC's default on Linux), a second
    GCS or agent on a taken address fails to start instead of silently taking half of the
    connections (e.g. a head started again while the old one still runs)."""
    from concurrent import futures

    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=[_TokenCheck(token)],
        options=_UNLIMITED + [("grpc.so_reuseport", 0)],
    )


def make_channel(address: str, token: Optional[str]) -> grpc.Channel:
    channel = grpc.intercept_channel(grpc.insecure_channel(address, options=_UNLIMITED + _RECONNECT),
                                     _GcsRetry())
    if token is None:
        return channel
    return grpc.intercept_channel(channel, _TokenAdder(token))


class AgentStubs:
    """Node-agent stubs by address, one channel each, made on first use (for the GCS's loops)."""

    def __init__(self, token: str):
        self._token = token
        self._stubs: dict = {}
        self._lock = threading.Lock()

    def at(self, address: str):
        with self._lock:
            stub = self._stubs.get(address)
            if stub is None:
                stub = self._stubs[address] = pb_grpc.NodeAgentStub(make_channel(address, self._token))
            return stub
