"""Pickling functions and classes so that remote tracebacks quote the user's own source.

cloudpickle pickles by value the code that a worker cannot import (`__main__`, notebook cells,
modules outside the worker's path). Such code has no file on the worker, and cloudpickle 3.1.3+
also renames its file to "<dynamic-code>", so a remote traceback would show neither the user's
file nor the failing line. Here each code object pickled by value keeps its file name, and brings
that file's lines along: unpickling puts them in `linecache`, where tracebacks look for them.
Code pickled by reference is imported on the worker and brings nothing.
"""

from __future__ import annotations

import io
import linecache
import types

import cloudpickle


def dumps(obj) -> bytes:
    """cloudpickle.dumps(obj, protocol=5), with code pickled by value keeping its file and lines."""
    with io.BytesIO() as file:
        _SourceKeepingPickler(file).dump(obj)
        return file.getvalue()


def _code_in_file(make_code, args, filename: str, lines: list[str]) -> types.CodeType:
    """Rebuild a code object pickled by value, under its own file name, and let linecache quote
    that file. mtime None: linecache.checkcache keeps the entry, as there is no file to check."""
    if lines:
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    return make_code(*args).replace(co_filename=filename)


class _SourceKeepingPickler(cloudpickle.Pickler):
    """Only code that cloudpickle pickles by value reaches the pickler as a code object: code of
    functions and classes pickled by reference travels as their importable names."""

    def __init__(self, file):
        super().__init__(file, protocol=5)
        self._module_globals: dict[str, dict] = {}  # file -> globals of a function defined there
        self._lines: dict[str, list[str]] = {}  # one list per file: the pickle holds it once

    def reducer_override(self, obj):
        if isinstance(obj, types.FunctionType):  # comes before its code; globals name the loader
            self._module_globals.setdefault(obj.__code__.co_filename, obj.__globals__)
        elif isinstance(obj, types.CodeType):
            make_code, args = self.dispatch_table[types.CodeType](obj)  # cloudpickle's own reducer
            filename = obj.co_filename
            return _code_in_file, (make_code, args, filename, self._lines_of(filename))
        return super().reducer_override(obj)

    def _lines_of(self, filename: str) -> list[str]:
        if filename not in self._lines:
            self._lines[filename] = linecache.getlines(filename, self._module_globals.get(filename))
        return self._lines[filename]
