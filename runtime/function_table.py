"""Functions and classes sent to workers: pickled once, stored in the GCS under their hash,
loaded once per worker."""

from __future__ import annotations

import hashlib
import threading

import cloudpickle

from runtime import source_lines
from runtime.generated import runtime_pb2 as pb


class FunctionTable:
    """Functions are pickled once, stored in the GCS under their hash, and loaded once per worker.
    Code pickled by value brings its source lines along, for remote tracebacks (see source_lines)."""

    def __init__(self, gcs):
        self._gcs = gcs
        self._exported: set[str] = set()
        self._loaded: dict[str, object] = {}
        self._lock = threading.Lock()

    def export(self, function) -> str:
        data = source_lines.dumps(function)
        function_id = hashlib.sha1(data).hexdigest()
        with self._lock:
            if function_id not in self._exported:
                self._gcs.KvPut(pb.KvRequest(key=f"fn:{function_id}", value=data), timeout=30)
                self._exported.add(function_id)
        return function_id

    def load(self, function_id: str):
        with self._lock:
            if function_id in self._loaded:
                return self._loaded[function_id]
        reply = self._gcs.KvGet(pb.KvRequest(key=f"fn:{function_id}"), timeout=30)
        if not reply.found:
            raise LookupError(f"function {function_id} is not in the GCS")
        function = cloudpickle.loads(reply.value)
        with self._lock:
            self._loaded[function_id] = function
        return function
