"""Installing this project's runtime on a node that may have no internet access.

The launcher builds a wheelhouse once per (project version, node Python, node CPU) — the project's
own wheel, zipped straight from the imported packages (so an editable checkout and an installed
distribution work the same), plus the binary wheels of exactly the versions in the runtime lock
(launcher/locks/), hash-checked — ships it to the node with the runner's `put`, and installs it
into `~/.cluster/venv` with `pip --no-index --require-hashes`: a node runs what was tested. A node that
already has that exact wheelhouse installed is skipped. On the head, the shipped wheelhouse is what
its autoscaler installs on the workers.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from typing import Callable, Optional, Sequence

from launcher import locks
from launcher.command_runner import CommandRunner
from launcher.errors import LauncherError

DISTRIBUTION = "cluster-launcher"
PACKAGES = ("launcher", "autoscaler", "runtime")
NODE_DIR = ".cluster"  # under the node user's home
NODE_WHEELHOUSE = f"~/{NODE_DIR}/wheelhouse"
NODE_VENV = f"~/{NODE_DIR}/venv"
MANIFEST = "manifest.json"
WHEEL_TAG = "py3-none-any"
REQUIREMENTS = "requirements.txt"  # the node's pins, with hashes: what the node installs


class RuntimeInstallFailed(LauncherError):
    """The runtime could not be built or installed; the message names the node and the step."""


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cluster-launcher"


def _package_files() -> list[tuple[str, Path]]:
    """(path inside the wheel, file on disk) for every file of the project's packages."""
    files = []
    for package in PACKAGES:
        root = Path(__import__(package).__file__).parent
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.append((f"{package}/{path.relative_to(root).as_posix()}", path))
    return files


def source_digest() -> str:
    """Changes whenever any file of the project's packages changes."""
    h = hashlib.sha256(release().encode())
    for name, path in _package_files():
        h.update(name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def release() -> str:
    return importlib.metadata.version(DISTRIBUTION)


def _project_wheel_name() -> str:
    return f"cluster_launcher-{release()}-{WHEEL_TAG}.whl"


def build_project_wheel(directory: Path) -> Path:
    """Zip the imported packages into a wheel in `directory` (pure Python, any platform)."""
    dist = importlib.metadata.distribution(DISTRIBUTION)
    version = release()
    info = f"cluster_launcher-{version}.dist-info"
    metadata = "\n".join(["Metadata-Version: 2.1", f"Name: {DISTRIBUTION}", f"Version: {version}"]
                         + [f"Provides-Extra: {e}" for e in dist.metadata.get_all("Provides-Extra") or []]
                         + [f"Requires-Dist: {r}" for r in dist.requires or []]) + "\n"
    entry_points = "".join(f"[{group}]\n" + "".join(f"{e.name} = {e.value}\n" for e in dist.entry_points
                                                  if e.group == group)
                           for group in sorted({e.group for e in dist.entry_points}))
    generated = {f"{info}/METADATA": metadata,
                 f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: cluster-launcher\nRoot-Is-Purelib: true\nTag: {WHEEL_TAG}\n",
                 f"{info}/entry_points.txt": entry_points}
    path = directory / _project_wheel_name()
    records = io.StringIO()
    writer = csv.writer(records, lineterminator="\n")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in [(n, p.read_bytes()) for n, p in _package_files()] + [
                (n, t.encode()) for n, t in generated.items()]:
            wheel.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data,
                           compress_type=zipfile.ZIP_DEFLATED)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            writer.writerow([name, f"sha256={digest}", len(data)])
        writer.writerow([f"{info}/RECORD", "", ""])
        wheel.writestr(zipfile.ZipInfo(f"{info}/RECORD", date_time=(2020, 1, 1, 0, 0, 0)), records.getvalue())
    return path


def locked_requirements(flavour: str, python: str, machine: str) -> str:
    """The lock's pins that apply on a Linux node with that Python (e.g. "3.11.2") and CPU, as a
    requirements file for pip's hash-checking mode (markers decided here: pip would decide them
    for the Python it runs on, not the node's)."""
    node = {"python_version": _major_minor(python), "python_full_version": python, "platform_machine": machine,
            "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "implementation_version": python, "platform_release": "", "platform_version": ""}
    pins = locks.applicable(locks.pins(locks.path(flavour).read_text()), node)
    return "".join(pin.requirement_line() + "\n" for pin in pins)


def _major_minor(python: str) -> str:
    return ".".join(python.split(".")[:2])


def _download_dependencies(directory: Path, requirements: str, python: str, machine: str,
                           echo) -> None:
    (directory / REQUIREMENTS).write_text(requirements)
    platforms = [f"--platform={p}_{machine}" for p in
                 ("manylinux_2_28", "manylinux_2_17", "manylinux2014", "manylinux_2_5", "manylinux1")]
    command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet",
               "--only-binary=:all:", "--no-deps", "--require-hashes",
               f"--python-version={python}", "--implementation=cp",
               *platforms, "--dest", str(directory), "-r", str(directory / REQUIREMENTS)]
    echo(f"Downloading the runtime's locked dependencies for Python {python} on {machine}...")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeInstallFailed(f"pip download of the runtime's dependencies failed: {last}")


def local_wheelhouse(python: str, machine: str, extras: tuple, echo: Callable[[str], None]) -> Path:
    """A complete wheelhouse for nodes with that Python (full version) and CPU: the one shipped to
    this node if it matches (we are on a head), else built into the cache (reused until the project
    or its lock changes). It holds the project's wheel, the lock's pins for the node as
    requirements.txt, and exactly those wheels."""
    try:
        flavour = locks.flavour_of(extras)
    except KeyError as error:
        raise RuntimeInstallFailed(str(error.args[0])) from None
    requirements = locked_requirements(flavour, python, machine)
    python = _major_minor(python)  # pins aside, one wheelhouse serves every micro version
    shipped = Path.home() / NODE_DIR / "wheelhouse"
    wanted = {"source": source_digest(), "python": python, "machine": machine, "extras": flavour}
    if _manifest_matches(shipped, wanted):
        return shipped
    target = _cache_root() / "wheelhouse" / f"{python}-{machine}-{flavour}-{wanted['source']}"
    if _manifest_matches(target, wanted):
        return target
    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    dependencies = _cache_root() / "wheelhouse" / f"deps-{python}-{machine}-{flavour}"
    deps_manifest = {"requirements": hashlib.sha256(requirements.encode()).hexdigest()}
    if not _manifest_matches(dependencies, deps_manifest):
        _download_dependencies(staging, requirements, python, machine, echo)
        shutil.rmtree(dependencies, ignore_errors=True)
        shutil.copytree(staging, dependencies)
        (dependencies / MANIFEST).write_text(json.dumps(deps_manifest))
    else:
        for item in [*dependencies.glob("*.whl"), dependencies / REQUIREMENTS]:
            shutil.copy2(item, staging)
    build_project_wheel(staging)
    (staging / MANIFEST).write_text(json.dumps({**wanted, "digest": _wheels_digest(staging)}))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)  # complete or absent, never half-built
    return target


def _manifest_matches(directory: Path, wanted: dict) -> bool:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return all(manifest.get(k) == v for k, v in wanted.items())


def _wheels_digest(directory: Path) -> str:
    h = hashlib.sha256()
    for wheel in sorted(directory.glob("*.whl")):
        h.update(wheel.name.encode() + str(wheel.stat().st_size).encode())
    return h.hexdigest()[:16]


def node_scripts(python: str) -> dict[str, str]:
    """The node's commands besides `cluster`, by name, as scripts running that `python`: `python`
    itself, and Ray's `ray` (runtime/ray_cli.py), so Ray's start commands run unchanged. Scripts,
    not symlinks: Python finds its venv next to the path it was started by. `ray` is never a
    console script of the project: installed on a user's machine, it would shadow a real Ray."""
    script = "#!/bin/sh\nexec {} {}\"$@\"\n"
    return {"python": script.format(python, ""),
            "ray": script.format(python, "-m runtime.ray_cli ")}


class RuntimeInstaller:
    """Installs the runtime on nodes over their command runners; one wheelhouse per node kind."""

    def __init__(self, echo: Callable[[str], None] = lambda _: None, extras: Sequence[str] = ()):
        self._echo = echo
        self._extras = tuple(sorted(extras))  # optional dependency groups, e.g. the cloud's SDK
        self._wheelhouses: dict[tuple, Path] = {}
        self._lock = threading.Lock()  # nodes are set up in parallel; build each wheelhouse once

    def version(self) -> str:
        """What is (to be) installed on the nodes: changes with the project's code."""
        return source_digest() + "".join(f"+{e}" for e in self._extras)

    def install(self, runner: CommandRunner, node_name: str,
                on_output: Optional[Callable[[str], None]] = None) -> None:
        probe = runner.run('python3 -c "import platform; '
                           'print(platform.python_version(), platform.machine())"')
        if probe.exit_code != 0:
            raise RuntimeInstallFailed(f"{node_name}: python3 is missing or broken "
                                       f"(exit {probe.exit_code}): {probe.output_tail.strip()[-200:]}")
        python, machine = probe.output_tail.split()[-2:]
        with self._lock:
            if (python, machine) not in self._wheelhouses:
                self._wheelhouses[python, machine] = local_wheelhouse(python, machine, self._extras,
                                                                      self._echo)
            wheelhouse = self._wheelhouses[python, machine]
        digest = json.loads((wheelhouse / MANIFEST).read_text())["digest"]
        marker = f"{NODE_VENV}/.installed-{digest}"
        if runner.run(f"test -f {marker}").exit_code == 0:
            return
        runner.put(str(wheelhouse), NODE_WHEELHOUSE)
        script = " && ".join([
            f"rm -rf {NODE_VENV}", f"python3 -m venv {NODE_VENV}",
            f"{NODE_VENV}/bin/pip install --quiet --no-index --find-links {NODE_WHEELHOUSE} "
            f"--require-hashes --no-deps -r {NODE_WHEELHOUSE}/{REQUIREMENTS}",
            f"{NODE_VENV}/bin/pip install --quiet --no-index --no-deps "
            f"{NODE_WHEELHOUSE}/{_project_wheel_name()}",
            "mkdir -p ~/.local/bin",
            f"ln -sf {NODE_VENV}/bin/cluster ~/.local/bin/cluster",
            *(f"printf %s {shlex.quote(text)} > ~/.local/bin/{name} && chmod +x ~/.local/bin/{name}"
              for name, text in node_scripts(f"{NODE_VENV}/bin/python").items()),
            f"touch {marker}",
        ])
        result = runner.run(script, on_output=on_output)
        if result.exit_code != 0:
            tail = " | ".join(result.output_tail.strip().splitlines()[-3:])
            raise RuntimeInstallFailed(f"{node_name}: installing the runtime failed "
                                       f"(exit {result.exit_code}): {tail}")
