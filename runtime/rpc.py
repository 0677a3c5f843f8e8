"""gRPC plumbing shared by every runtime process: token auth on every port, and channel options.

Every server rejects a call whose `authorization` metadata is not the cluster token; every client
adds it. The token is compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from typing import Optional

import grpc

AUTH_METADATA_KEY = "authorization"
_UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
# A peer that is still starting (or restarting) is retried after 50 ms, not gRPC's default 1 s:
# otherwise one early attempt makes every process start take a second.
_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
              ("grpc.max_reconnect_backoff_ms", 2000)]


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


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def make_server(token: str, max_workers: int = 32) -> grpc.Server:
    from concurrent import futures

    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=[_TokenCheck(token)],
        options=_UNLIMITED,
    )


def make_channel(address: str, token: Optional[str]) -> grpc.Channel:
    channel = grpc.insecure_channel(address, options=_UNLIMITED + _RECONNECT)
    if token is None:
        return channel
    return grpc.intercept_channel(channel, _TokenAdder(token))
