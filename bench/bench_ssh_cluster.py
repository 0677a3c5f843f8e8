"""The SSH path on container nodes (needs root; builds the Debian rootfs once, ~40 s):

    python bench/bench_ssh_cluster.py

Prints: cold `cluster up` of a head + 2 workers (min_workers) until all three runtimes are live,
an unchanged re-up, `cluster exec echo`, `cluster down` (and that nothing is left running), and
commands per second through one persistent SSH connection vs a fresh connection per command.
For orientation (Ray 2.60 on three sshd nodes here, from the issue): cold `ray up` 33-39 s and 84 s
until all three nodes were alive, unchanged re-up 19 s, `ray exec echo` ~2 s, `ray down` 14-16 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from launcher.ssh import SSHCommandRunner, SSHTarget  # noqa: E402
from tests.harness.containers import ContainerCluster, free_ip, ssh_keypair  # noqa: E402

CLUSTER = str(Path(sys.executable).parent / "cluster")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        key_path, public_key = ssh_keypair(tmp)
        nodes = ContainerCluster(tmp / "nodes", public_key)
        try:
            run(tmp, key_path, nodes)
        finally:
            nodes.stop_all()


def run(tmp: Path, key_path: Path, nodes: ContainerCluster) -> None:
    head, *workers = [nodes.start(free_ip()) for _ in range(3)]
    config = {
        "cluster_name": "bench-ssh", "max_workers": 2, "autoscaler_update_interval_s": 1,
        "provider": {"type": "ssh", "head_ip": head.ip, "worker_ips": [w.ip for w in workers]},
        "auth": {"ssh_user": "ubuntu", "ssh_private_key": str(key_path)},
        "available_node_types": {"head": {"resources": {"CPU": 1}},
                                 "worker": {"resources": {"CPU": 2}, "min_workers": 2}},
        "head_node_type": "head",
    }
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
    env.update(HOME=str(tmp / "home"), XDG_CACHE_HOME=str(Path.home() / ".cache"))

    def cli(*args) -> tuple[float, str]:
        start = time.perf_counter()
        out = subprocess.run([CLUSTER, args[0], str(path), *args[1:]], env=env, text=True,
                             capture_output=True, check=True, timeout=600).stdout
        return time.perf_counter() - start, out

    figures = {}
    start = time.perf_counter()
    figures["cold up (head ready)"], _ = cli("up", "-y")
    while cli("status")[1].count("idle") + cli("status")[1].count("busy") < 3:
        time.sleep(0.5)
    figures["cold up until 3 nodes live"] = time.perf_counter() - start
    figures["unchanged re-up"], _ = cli("up", "-y")
    figures["cluster exec echo"] = min(cli("exec", "echo hi")[0] for _ in range(5))
    figures["cluster down"], _ = cli("down", "-y")
    leftovers = [p for n in (head, *workers) for p in n.pids()
                 if b"runtime." in Path(f"/proc/{p}/cmdline").read_bytes()]
    print(f"{'step':<30}{'seconds':>9}")
    for step, seconds in figures.items():
        print(f"{step:<30}{seconds:>9.2f}")
    print(f"runtime processes left on the nodes after down: {len(leftovers)}")
    commands_per_second(head.ip, key_path, tmp)


def commands_per_second(ip: str, key_path: Path, tmp: Path, count: int = 50) -> None:
    target = SSHTarget(host=ip, user="ubuntu", key_path=str(key_path),
                       known_hosts=str(tmp / "bench_known_hosts"))
    runner = SSHCommandRunner(target)
    runner.run("true")
    start = time.perf_counter()
    for _ in range(count):
        runner.run("true")
    persistent = count / (time.perf_counter() - start)
    runner.close()
    start = time.perf_counter()
    for _ in range(count // 5):
        fresh = SSHCommandRunner(target)
        fresh.run("true")
        fresh.close()
    per_connection = (count // 5) / (time.perf_counter() - start)
    print(f"commands/s, one persistent connection: {persistent:.1f}; a fresh connection each: "
          f"{per_connection:.1f} (x{persistent / per_connection:.1f})")


if __name__ == "__main__":
    main()
