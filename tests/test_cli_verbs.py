"""`exec`, `attach`, `rsync-up`, `rsync-down` and `monitor` through the real CLI on a `local` cluster
with one worker kept by min_workers."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import CLUSTER

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verbs")
    config = yaml.safe_load((REPO / "cluster-configs" / "local.yaml").read_text())
    config["cluster_name"] = f"verbs-{os.getpid()}"
    config["autoscaler_update_interval_s"] = 0.5
    config["available_node_types"]["cpu-2"]["min_workers"] = 1
    config["rsync_exclude"] = ["*.log"]
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
    env["CLUSTER_LOCAL_STATE_DIR"] = str(tmp / "state")

    def cli(*args, input=None):
        return subprocess.run([CLUSTER, *args[:1], str(path), *args[1:]], env=env, input=input,
                              capture_output=True, text=True, timeout=60, cwd=tmp)

    assert cli("up", "-y").returncode == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not cli("get-worker-ips").stdout.strip():
        time.sleep(0.3)
    yield cli, tmp
    cli("down", "-y")


def test_exec_returns_output_and_exit_code(cluster):
    cli, _ = cluster
    result = cli("exec", "echo on-$CLUSTER_NODE_TYPE; exit 3")
    assert result.returncode == 3 and result.stdout == "on-head\n"


def test_exec_on_a_worker_by_ip(cluster):
    cli, _ = cluster
    worker_ip = cli("get-worker-ips").stdout.split()[0]
    assert cli("exec", "echo $CLUSTER_NODE_IP", "--node", worker_ip).stdout.strip() == worker_ip
    unknown = cli("exec", "true", "--node", "127.0.9.9")
    assert unknown.returncode != 0 and "no node with IP 127.0.9.9" in unknown.stderr


def test_rsync_round_trip_honours_excludes_on_every_node(cluster):
    cli, tmp = cluster
    tree = tmp / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "data.bin").write_bytes(os.urandom(200_000))
    (tree / "keep.txt").write_text("keep")
    (tree / "noise.log").write_text("excluded")
    assert cli("rsync-up", str(tree), "~/tree", "--all-nodes").stdout.endswith("Copied to 2 node(s).\n")
    worker_ip = cli("get-worker-ips").stdout.split()[0]
    listing = cli("exec", "cd ~/tree && find . -type f | sort", "--node", worker_ip).stdout
    assert listing.split() == ["./keep.txt", "./sub/data.bin"]
    back = tmp / "back"
    assert cli("rsync-down", "~/tree", str(back)).returncode == 0
    assert (back / "sub" / "data.bin").read_bytes() == (tree / "sub" / "data.bin").read_bytes()
    assert not (back / "noise.log").exists()


def test_rsync_up_of_a_missing_source_is_one_line(cluster):
    cli, tmp = cluster
    result = cli("rsync-up", str(tmp / "nope"), "~/x")
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: {tmp / 'nope'}: no such file or directory"


def test_attach_gives_a_login_shell_on_the_head(cluster):
    cli, _ = cluster
    result = cli("attach", input="echo shell-in-$PWD; exit 4\n")
    head_home = cli("exec", "echo $HOME").stdout.strip()
    assert result.returncode == 4 and f"shell-in-{head_home}" in result.stdout


def test_monitor_shows_the_autoscaler_log(cluster):
    cli, tmp = cluster
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
    env["CLUSTER_LOCAL_STATE_DIR"] = str(tmp / "state")
    process = subprocess.Popen([CLUSTER, "monitor", str(tmp / "cluster.yaml"), "-n", "50"],
                               env=env, stdout=subprocess.PIPE, text=True)
    try:
        first = process.stdout.readline()
    finally:
        process.kill()
        process.wait()
    assert "autoscaler" in first


def test_version_here_and_on_the_head(cluster):
    cli, _ = cluster
    here = subprocess.run([CLUSTER, "--version"], capture_output=True, text=True, timeout=30)
    assert here.returncode == 0 and here.stdout.startswith("cluster-launcher 0.")
    both = cli("version")
    assert both.returncode == 0 and both.stderr == ""
    mine, head = both.stdout.splitlines()
    assert mine == here.stdout.strip() and head.startswith("head ") and head.endswith(": " + mine)


def test_dash_h_is_help_on_every_command():
    listing = subprocess.run([CLUSTER, "-h"], capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0
    commands = [line.split()[0] for line in listing.stdout.split("Commands:")[1].splitlines()
                if line.startswith("  ")]
    assert {"up", "down", "exec", "submit", "status", "version", "start", "list"} <= set(commands)
    for command in commands:
        result = subprocess.run([CLUSTER, command, "-h"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and result.stdout.startswith(f"Usage: cluster {command} "), command
