"""The lock: what a development machine and every node install, and the check that stops a stale one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from launcher import locks
from launcher.runtime_install import locked_requirements

REPO = Path(__file__).resolve().parents[1]


def _pins(requirements: str) -> dict[str, str]:
    return dict(line.split(" ", 1)[0].split("==") for line in requirements.splitlines())


def test_every_runtime_lock_agrees_with_the_dev_lock_that_was_tested():
    dev = {(p.name, p.version, p.marker) for p in locks.pins(locks.path(locks.DEV).read_text())}
    for flavour in locks.RUNTIME_FLAVOURS:
        for pin in locks.pins(locks.path(flavour).read_text()):
            assert pin.hashes, f"{flavour}: {pin.name} has no hash"
            assert any(n == pin.name and v == pin.version for n, v, _ in dev), \
                f"{flavour}.txt pins {pin.name}=={pin.version}, which the dev lock does not"


def test_a_node_gets_the_pins_of_its_own_python_and_cpu():
    """Markers are decided for the node, not for the Python that builds its wheelhouse."""
    by_python = {}
    for python in ("3.10.12", "3.11.2", "3.12.3"):
        requirements = locked_requirements("aws", python, "aarch64")
        assert "; " not in requirements and "--hash=sha256:" in requirements
        by_python[python] = _pins(requirements)
    assert {"cloudpickle", "paramiko", "grpcio", "boto3", "pyarrow"} <= set(by_python["3.11.2"])
    locked = {p.name: p for p in locks.pins(locks.path("aws").read_text())}
    for python, pins in by_python.items():
        assert len(pins) == len(set(pins))  # one version of each package, never two
        assert pins["paramiko"] == locked["paramiko"].version
    assert not any(n == "colorama" for p in by_python.values() for n in p)  # Windows only


def _copy_of_the_project(tmp_path: Path) -> Path:
    copy = tmp_path / "project"
    for part in ("pyproject.toml", "scripts", "launcher/__init__.py", "launcher/locks"):
        source, target = REPO / part, copy / part
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
    return copy


def test_the_lock_matches_pyproject():
    check = subprocess.run([sys.executable, "scripts/locks.py", "check"], cwd=REPO,
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


def test_a_dependency_added_without_relocking_stops_the_tests_at_once(tmp_path):
    copy = _copy_of_the_project(tmp_path)
    pyproject = copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"pyyaml>=6.0",', '"pyyaml>=6.0", "rich>=13",'))
    run = subprocess.run(["bash", "scripts/test.sh"], cwd=copy, capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [
        "launcher/locks/core.txt is out of date: pyproject.toml asks for 'rich>=13' (rich), which it "
        "was not locked with; re-lock with: bash scripts/lock.sh"]
    assert not (copy / ".venv").exists()  # nothing was installed


def test_a_dependency_removed_or_a_range_changed_is_named_too(tmp_path):
    copy = _copy_of_the_project(tmp_path)
    pyproject = copy / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(text.replace('"cloudpickle>=3.0",\n', ""))
    gone = subprocess.run([sys.executable, "scripts/locks.py", "check"], cwd=copy,
                          capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1 and "'cloudpickle>=3.0' (cloudpickle), which pyproject.toml no " \
        "longer asks for" in gone.stderr
    pyproject.write_text(text.replace('"moto[ec2]>=5"', '"moto[ec2]>=6"'))
    moved = subprocess.run([sys.executable, "scripts/locks.py", "check"], cwd=copy,
                           capture_output=True, text=True, timeout=30)
    assert moved.returncode == 1 and moved.stderr.startswith("launcher/locks/dev.txt is out of date")
    assert "'moto[ec2]>=6' (moto)" in moved.stderr
