"""The lock files: every package the project installs, pinned with hashes (made by scripts/lock.sh).

`dev.txt` is what a development or CI machine runs (the project, its test set and every cloud extra,
plus pip and the build tools). The runtime locks are subsets of it, locked with it as constraints, so
a node runs exactly the versions that were tested: `core.txt` for every node, `aws.txt`, `gcp.txt`
and `azure.txt` for a head that also calls its cloud's SDK. Each is universal (uv's resolution
for every Python from 3.10 and every platform, environment markers where versions differ).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DIRECTORY = Path(__file__).parent
DEV = "dev"
RUNTIME_FLAVOURS = {"core": (), "aws": ("aws",), "gcp": ("gcp",), "azure": ("azure",)}
INPUT_PREFIX = "# input: "  # the lock's header lists the requirements it was made from


@dataclass(frozen=True)
class Pin:
    """One locked line: `name==version`, for the environments its marker selects."""

    name: str
    version: str
    marker: str  # "" when it applies everywhere
    hashes: tuple[str, ...]

    def requirement_line(self) -> str:
        """The line as pip takes it in hash-checking mode, marker already decided."""
        return f"{self.name}=={self.version} " + " ".join(f"--hash={h}" for h in self.hashes)


def path(flavour: str) -> Path:
    return DIRECTORY / f"{flavour}.txt"


def flavour_of(extras: tuple) -> str:
    """The runtime lock for a node with these extras installed."""
    for flavour, wanted in RUNTIME_FLAVOURS.items():
        if wanted == tuple(sorted(extras)):
            return flavour
    raise KeyError(f"no runtime lock for extras {list(extras)}; locked: {sorted(RUNTIME_FLAVOURS)}")


def inputs(text: str) -> list[str]:
    """The requirements a lock was made from, as its header lists them."""
    return [line[len(INPUT_PREFIX):].strip() for line in text.splitlines()
            if line.startswith(INPUT_PREFIX)]


def applicable(pins: list[Pin], environment: dict | None = None) -> list[Pin]:
    """The pins whose markers hold in `environment` (PEP 508 marker variables; None: this
    interpreter's). Needs `packaging`, which the check before installing never calls for."""
    from packaging.markers import Marker

    return [pin for pin in pins if not pin.marker or Marker(pin.marker).evaluate(environment)]


def pins(text: str) -> list[Pin]:
    """Every pinned line of a lock file (pip's requirements format, with hashes)."""
    logical = re.sub(r"\\\n", " ", text)
    found = []
    for line in logical.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        requirement = line.split("--hash=", 1)[0].strip()
        spec, _, marker = requirement.partition(";")
        name, _, version = spec.strip().partition("==")
        found.append(Pin(name.strip(), version.strip(), marker.strip(),
                         tuple(re.findall(r"--hash=(\S+)", line))))
    return found
