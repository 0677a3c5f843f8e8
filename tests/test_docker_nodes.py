"""Ray's `docker:` section end to end: aws nodes (moto, container nodes on 127.100.0.x, as in
moto_tests/test_aws_e2e.py) run the runtime inside a podman container on each node.

No registry is reachable, so the image is made on each node by its initialization command (which
runs on the host, before the container starts: Ray's order), from the node's own filesystem, and
`pull_before_run: false` uses it as it is. The head's autoscaler, itself in the head's container,
launches a worker whose runtime runs in a container of the worker image's options; `cluster exec`
runs in the container; an unchanged `cluster up` keeps it; `cluster down` leaves no instance, no
node and no container cgroup.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from moto_tests.conftest import (REGION, SAFE_ENV, aws_env, instance_ips,  # noqa: F401
                                 live_tags, moto_server)
from moto_tests.test_aws_e2e import aws  # noqa: F401  (moto, a 127.100.0.0/24 subnet, an image)
from tests.harness import cloud_e2e
from tests.harness.containers import containers, ssh_key  # noqa: F401
from tests.harness.instances import wait_until, watching

IMAGE = "localhost/cluster-node:test"
# The node's filesystem as an image (the login user's home and the engine's storage left out).
IMPORT = (f"sudo podman image exists {IMAGE} || sudo tar -C / --one-file-system "
          "--exclude=./home --exclude=./var/lib/containers --exclude=./var/tmp -c . 2>/dev/null "
          f"| sudo podman import -q - {IMAGE}")
DRIVER = """import runtime as ray, os
ray.init('auto')
def where():
    return (os.environ.get('ROLE'), os.path.exists('/run/.containerenv'),
            open(os.path.expanduser('~/data/note.txt')).read())
print('head', ray.get(ray.remote(num_cpus=1)(where).remote()))
print('worker', ray.get(ray.remote(num_cpus=2)(where).remote(), timeout=240))
"""


def _config(tmp_path: Path, endpoint: str, subnet: str, image: str, key_path: Path) -> Path:
    aws_env = " ".join(f"{k}={v}" for k, v in {**SAFE_ENV, "AWS_ENDPOINT_URL": endpoint}.items()
                       if not k.startswith("MOTO_"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "note.txt").write_text("mounted")
    node = {"InstanceType": "m5.large", "ImageId": image, "SubnetIds": [subnet]}
    config = {
        "cluster_name": "docker-e2e", "max_workers": 1, "idle_timeout_minutes": 0.15,
        "autoscaler_update_interval_s": 1,
        "provider": {"type": "aws", "region": REGION, "use_internal_ips": True, "ssh_timeout_s": 60},
        "auth": {"ssh_user": "ubuntu", "ssh_private_key": str(key_path)},
        "docker": {"image": IMAGE, "container_name": "ray_container", "pull_before_run": False,
                   "head_run_options": ["--env ROLE=head"], "worker_run_options": ["--env ROLE=worker"]},
        "initialization_commands": [IMPORT],
        "file_mounts": {"~/data": str(tmp_path / "data")},
        "available_node_types": {"head": {"node_config": node, "resources": {"CPU": 1}},
                                 "worker": {"node_config": node, "resources": {"CPU": 2},
                                            "max_workers": 1}},
        "head_node_type": "head",
        "head_start_commands": [
            "cluster stop",
            f"{aws_env} cluster start --head --port=6379 --autoscaling-config=~/cluster_bootstrap.yaml"],
    }
    path = tmp_path / "docker.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _container_ids(nodes) -> set[str]:
    """The containers podman made on the nodes (its store is on the host's disk)."""
    return {c.name for node in nodes
            for c in (node.root / "var/lib/containers/storage/overlay-containers").glob("*/")}


def test_nodes_run_in_containers_from_setup_to_down(aws, moto_server, containers,  # noqa: F811
                                                    ssh_key, tmp_path):
    client, subnet, image = aws
    cli = cloud_e2e.cluster_cli(_config(tmp_path, moto_server, subnet, image, ssh_key[0]), tmp_path)
    with watching(lambda: instance_ips(client), containers) as watcher:
        try:
            up = cli("up", "-y")
            assert up.returncode == 0, up.stdout[-3000:] + up.stderr
            assert "running initialization commands on the host" in up.stdout
            assert "started container ray_container" in up.stdout
            again = cli("up", "-y")
            assert again.returncode == 0 and "up to date" in again.stdout, again.stdout

            inside = cli("exec", "test -f /run/.containerenv && echo in-$ROLE && cat ~/data/note.txt")
            assert inside.returncode == 0 and "in-head\nmounted" in inside.stdout, inside.stdout

            (tmp_path / "driver.py").write_text(DRIVER)
            run = cli("submit", str(tmp_path / "driver.py"), timeout=400)
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr
            assert "head ('head', True, 'mounted')" in run.stdout
            assert "worker ('worker', True, 'mounted')" in run.stdout
            assert sorted(t["node-kind"] for t in live_tags(client).values()) == ["head", "worker"]
            made = _container_ids(watcher.nodes.values())
            assert len(made) == 2  # one per node: the image's HOME probe was removed (--rm)
        finally:
            down = cli("down", "-y")
        assert down.returncode == 0, down.stderr
        assert live_tags(client) == {}
        wait_until(lambda: not watcher.nodes, 30, "the nodes of terminated instances to power off")
    left = [g for pattern in ("libpod_parent", "*/libpod_parent") for c in made
            for g in Path("/sys/fs/cgroup").glob(f"{pattern}/libpod-{c}")]
    assert left == []
