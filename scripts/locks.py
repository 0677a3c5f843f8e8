"""Makes and checks the lock files in launcher/locks/ (see that package's docstring).

    python scripts/locks.py compile UV   re-lock everything with the uv binary UV (scripts/lock.sh)
    python scripts/locks.py check        exit 1 with one line if a lock no longer matches pyproject.toml
    python scripts/locks.py drift        list where this environment differs from the dev lock

Why uv: one universal resolution covers Python 3.10-3.12 on every platform (markers where versions
differ), with hashes for every wheel, in seconds; pip-tools resolves for the running interpreter
and platform only, so it would need one lock per Python and CPU. pip installs the result.
Runs on the bare interpreter (before any package is installed): standard library only.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from launcher import locks  # noqa: E402  (a module with no dependencies)

RELOCK = "re-lock with: bash scripts/lock.sh"
OLDEST_PYTHON = "3.10"  # pyproject's requires-python
DEV_TOOLS = ["pip"]  # the installer itself is pinned too


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def wanted_inputs(pyproject: dict) -> dict[str, list[str]]:
    """Per lock file: the requirements pyproject.toml asks of it, in order, each once."""
    project, optional = pyproject["project"], pyproject["project"].get("optional-dependencies", {})
    clouds = [r for extras in locks.RUNTIME_FLAVOURS.values() for e in extras for r in optional[e]]
    wanted = {flavour: project["dependencies"] + [r for e in extras for r in optional[e]]
              for flavour, extras in locks.RUNTIME_FLAVOURS.items()}
    wanted[locks.DEV] = (project["dependencies"] + optional.get("test", []) + clouds
                         + pyproject["build-system"]["requires"] + DEV_TOOLS)
    return {flavour: list(dict.fromkeys(r.strip() for r in reqs)) for flavour, reqs in wanted.items()}


def _extras(flavour: str, pyproject: dict) -> list[str]:
    if flavour == locks.DEV:
        return sorted(pyproject["project"].get("optional-dependencies", {}))
    return list(locks.RUNTIME_FLAVOURS[flavour])


def compile_all(uv: str) -> None:
    """The dev lock first; each runtime lock then takes its versions as constraints."""
    pyproject = _pyproject()
    wanted = wanted_inputs(pyproject)
    for flavour in [locks.DEV] + [f for f in wanted if f != locks.DEV]:
        command = [uv, "pip", "compile", "pyproject.toml", "--universal",
                   f"--python-version={OLDEST_PYTHON}", "--no-python-downloads", "--generate-hashes",
                   "--quiet", "--custom-compile-command", "bash scripts/lock.sh",
                   *(f"--extra={e}" for e in _extras(flavour, pyproject))]
        stdin = ""
        if flavour == locks.DEV:
            command.append("-")
            stdin = "\n".join(pyproject["build-system"]["requires"] + DEV_TOOLS) + "\n"
        else:
            command.append(f"--constraint={locks.path(locks.DEV).relative_to(REPO)}")
        print(f"==> locking {locks.path(flavour).relative_to(REPO)}", flush=True)
        result = subprocess.run(command, cwd=REPO, input=stdin, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"uv pip compile failed for {flavour}:\n{result.stderr.strip()}")
        header = ("# Made by scripts/lock.sh from pyproject.toml; do not edit. It was locked from:\n"
                  + "".join(f"{locks.INPUT_PREFIX}{r}\n" for r in wanted[flavour]))
        locks.path(flavour).write_text(header + result.stdout)


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0)


def stale_reason() -> str | None:
    """One line naming the first lock that does not match pyproject.toml, and the package."""
    def normal(requirement: str) -> str:
        return re.sub(r"\s+", "", requirement).lower()

    for flavour, wanted in wanted_inputs(_pyproject()).items():
        lock = locks.path(flavour)
        if not lock.exists():
            return f"{lock.relative_to(REPO)} is missing: {RELOCK}"
        locked = {normal(r): r for r in locks.inputs(lock.read_text())}
        for requirement in wanted:
            if normal(requirement) not in locked:
                return (f"{lock.relative_to(REPO)} is out of date: pyproject.toml asks for "
                        f"'{requirement}' ({_name(requirement)}), which it was not locked with; {RELOCK}")
        gone = set(locked) - {normal(r) for r in wanted}
        if gone:
            requirement = locked[sorted(gone)[0]]
            return (f"{lock.relative_to(REPO)} is out of date: it was locked with '{requirement}' "
                    f"({_name(requirement)}), which pyproject.toml no longer asks for; {RELOCK}")
    return None


def drift() -> list[str]:
    """Installed distributions whose version differs from the dev lock's pin for this Python."""
    from packaging.utils import canonicalize_name  # installed by then: drift runs in the venv

    pinned = {canonicalize_name(pin.name): pin.version
              for pin in locks.applicable(locks.pins(locks.path(locks.DEV).read_text()))}
    lines = []
    for dist in importlib.metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in pinned and pinned[name] != dist.version:
            lines.append(f"{name}: locked {pinned[name]}, here {dist.version}")
    return sorted(lines)


def main(argv: list[str]) -> None:
    if argv[:1] == ["compile"] and len(argv) == 2:
        compile_all(argv[1])
    elif argv == ["check"]:
        reason = stale_reason()
        if reason:
            sys.exit(reason)
    elif argv == ["drift"]:
        lines = drift()
        print("Versions that differ from launcher/locks/dev.txt:" if lines
              else "Every installed version matches launcher/locks/dev.txt.")
        for line in lines:
            print(f"  {line}")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
