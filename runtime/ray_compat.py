"""`import ray` for programs written for Ray, answered by this runtime, without editing them.

    python -m runtime.ray_compat my_program.py [args...]   # or: -m package.module [args...]

runs the program with `ray` (and `ray.util`, `ray.exceptions`, `ray.actor`, ...) resolving to
this runtime's modules; `install()` does the same from inside a program. The aliases are the very
module objects of `runtime`, so functions and classes pickled by such a program name `runtime`
and workers need no alias. A real Ray installed alongside is shadowed only where asked, and then
with one line on stderr saying so; without asking, `import ray` still finds the real one.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import runpy
import sys
import types
from pathlib import Path

# Ray module paths whose names differ here (the rest map ray.X to runtime.X).
_RENAMED = {"ray.autoscaler.sdk": "runtime.api", "ray.util.actor_pool": "runtime.util.actor_pool"}
_SYNTHETIC_PACKAGES = ("ray.autoscaler",)  # packages Ray has that hold only renamed modules


def _target(name: str) -> str:
    return _RENAMED.get(name) or "runtime" + name[len("ray"):]


class _RayAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name != "ray" and not name.startswith("ray."):
            return None
        if name not in _SYNTHETIC_PACKAGES and importlib.util.find_spec(_target(name)) is None:
            return None
        return importlib.util.spec_from_loader(name, self, is_package=True)

    def create_module(self, spec):
        if spec.name in _SYNTHETIC_PACKAGES:
            module = types.ModuleType(spec.name)
            module.__path__ = []
            return module
        return importlib.import_module(_target(spec.name))

    def exec_module(self, module):
        pass  # the runtime's module is already loaded


_alias = _RayAlias()


def install(fallback: bool = False) -> None:
    """Make `import ray` give this runtime. `fallback`: only when no real Ray is importable
    (used by workers, for task code that imports ray itself)."""
    if _alias in sys.meta_path:
        return
    if fallback:
        sys.meta_path.append(_alias)
        return
    real = importlib.machinery.PathFinder.find_spec("ray")
    if real is not None:
        print(f"note: `import ray` runs cluster-launcher's runtime; the Ray installed at "
              f"{real.origin} is not used by this program", file=sys.stderr)
    for name in [n for n in sys.modules if n == "ray" or n.startswith("ray.")]:
        del sys.modules[name]  # a real Ray imported earlier
    sys.meta_path.insert(0, _alias)


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help") or argv == ["-m"]:
        print("usage: python -m runtime.ray_compat PROGRAM.py [ARGS...]\n"
              "       python -m runtime.ray_compat -m MODULE [ARGS...]\n"
              "Runs a program written for Ray with `import ray` answered by this runtime.",
              file=sys.stderr)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    install()
    if argv[0] == "-m":
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        sys.path.insert(0, str(Path(argv[0]).resolve().parent))
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
