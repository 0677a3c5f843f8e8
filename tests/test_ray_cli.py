"""The node's `ray` command (runtime/ray_cli.py): Ray's flags mapped onto `cluster start`/`stop`
with the node functions replaced (no process starts), then Ray's own start commands bringing up a
real `local` cluster."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from runtime import node, ray_cli
from runtime.session import Session
from tests.test_e2e_local import _nodes, local_cluster  # noqa: F401  (a fixture)

WARNING = "ray start: ignoring options this runtime has no counterpart for: "


@pytest.fixture
def calls(runtime_home, monkeypatch):
    """What `ray` asked of the node, by function: (args, kwargs) of each call."""
    made = {}

    def record(name, result):
        def fake(*args, **kwargs):
            made[name] = (args, kwargs)
            return result
        monkeypatch.setattr(node, name, fake)

    session = Session("127.0.0.5:6390", "127.0.0.5:1234", "n1", "127.0.0.5", True)
    record("start_head", session)
    record("start_worker", session)
    record("stop_node", ["agent", "gcs"])
    return made


def ray(*args):
    return CliRunner().invoke(ray_cli.ray, list(args))


def test_head_flags_map_to_cluster_start_with_one_warning_for_the_rest(calls):
    result = ray("start", "--head", "--port=6390", "--node-ip-address=127.0.0.5", "--num-cpus=4",
                 "--num-gpus=1", '--resources={"TPU": 2}', "--memory=1000",
                 "--object-store-memory=123456", "--object-manager-port=8076",
                 "--autoscaling-config=~/ray_bootstrap_config.yaml", "--dashboard-host=0.0.0.0",
                 "--include-dashboard", "false", "--disable-usage-stats")
    assert result.exit_code == 0, result.output
    (port, resources, node_type), kwargs = calls["start_head"]
    assert port == 6390 and node_type == "head"
    assert {k: resources[k] for k in ("CPU", "GPU", "TPU", "memory")} == {
        "CPU": 4.0, "GPU": 1.0, "TPU": 2.0, "memory": 1000.0}
    assert kwargs == {"ip": "127.0.0.5", "autoscaling_config": "~/ray_bootstrap_config.yaml",
                      "token": None, "object_store_memory": 123456, "gcs_storage": None}
    assert result.stderr.splitlines() == [WARNING + "--object-manager-port, --dashboard-host, "
                                          "--include-dashboard, --disable-usage-stats"]


def test_head_defaults_to_port_6379_and_no_monitor_drops_the_autoscaler(calls):
    result = ray("start", "--head", "--autoscaling-config=x.yaml", "--no-monitor")
    assert result.exit_code == 0 and result.stderr == ""
    (port, _, _), kwargs = calls["start_head"]
    assert port == 6379 and kwargs["autoscaling_config"] is None


def test_worker_joins_the_address_given(calls):
    result = ray("start", "--address=127.0.0.9:6379", "--object-manager-port=8076")
    assert result.exit_code == 0, result.output
    (address, _, node_type), kwargs = calls["start_worker"]
    assert (address, node_type, kwargs["ip"]) == ("127.0.0.9:6379", "worker", None)
    assert result.stderr.splitlines() == [WARNING + "--object-manager-port"]


@pytest.mark.parametrize("args, message", [
    (["start", "--head", "--no-such-flag"], "ray start: No such option '--no-such-flag'."),
    (["start", "--address=127.0.0.9:6379", "--port=6379"],
     "ray start: --port should only be specified when starting the head with --head"),
    (["start"], "ray start: give exactly one of --head or --address HOST:PORT"),
    (["up", "cluster.yaml"], "ray up is not supported by cluster-launcher's runtime"),
], ids=["unknown-flag", "port-on-worker", "neither-head-nor-address", "other-subcommand"])
def test_errors_are_one_line_and_start_nothing(calls, args, message):
    result = ray(*args)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [message]
    assert not calls.get("start_head") and not calls.get("start_worker")


@pytest.mark.parametrize("args, grace_s", [([], 16), (["-g", "3"], 3), (["--force"], 0)])
def test_stop_maps_force_and_grace_period(calls, args, grace_s):
    result = ray("stop", *args)
    assert result.exit_code == 0 and result.output == "Stopped agent, gcs.\n"
    assert calls["stop_node"] == ((), {"grace_s": grace_s})


def test_block_stops_the_node_when_a_runtime_process_exits(calls, monkeypatch):
    monkeypatch.setattr(ray_cli.signal, "signal", lambda *_: None)  # leave pytest's SIGTERM alone
    monkeypatch.setattr(ray_cli.os, "wait", lambda: (4242, 0))
    result = ray("start", "--head", "--block")
    assert result.exit_code == 1 and "stop_node" in calls
    assert "runtime process 4242 exited" in result.stderr


def test_status_is_cluster_status_and_version_says_what_it_is(calls, monkeypatch):
    monkeypatch.setattr(ray_cli.os, "execv", lambda path, argv: calls.update(execv=argv))
    assert ray("status").exit_code == 0
    assert calls["execv"] == [str(Path(sys.executable).parent / "cluster"), "status"]
    version = ray("--version").output
    assert "cluster-launcher" in version and "not Ray" in version


@pytest.fixture
def ray_yaml_cluster(local_cluster):  # noqa: F811
    """local.yaml with Ray's start commands under Ray's keys, and one worker kept by min_workers."""
    cli, config, state = local_cluster
    data = yaml.safe_load(Path(config).read_text())
    data.update(autoscaler_update_interval_s=0.5, head_start_ray_commands=[
        "ray stop",
        "ray start --head --port=6379 --object-manager-port=8076 "
        "--autoscaling-config=~/ray_bootstrap_config.yaml --dashboard-host=0.0.0.0",
    ], worker_start_ray_commands=[
        "ray stop",
        "ray start --address=$RAY_HEAD_IP:6379 --object-manager-port=8076",
    ])
    data["available_node_types"]["cpu-2"]["min_workers"] = 1
    Path(config).write_text(yaml.safe_dump(data))
    return cli, config, state


def test_rays_start_commands_bring_up_a_working_cluster(ray_yaml_cluster, tmp_path):
    cli, config, state = ray_yaml_cluster
    out = cli("up", "-y", config).stdout
    assert WARNING + "--object-manager-port, --dashboard-host" in out
    [head] = _nodes(state).values()
    home = Path(head["node_dir"])
    assert (home / "ray_bootstrap_config.yaml").read_text() == (
        home / "cluster_bootstrap.yaml").read_text()

    driver = tmp_path / "driver.py"  # 2 CPUs: only the worker, joined by Ray's command, has them
    driver.write_text(
        "import os, runtime as ray\n"
        "ray.init('auto')\n"
        "where = ray.remote(num_cpus=2)(lambda: os.environ['CLUSTER_NODE_TYPE'])\n"
        "print('ran on', ray.get(where.remote(), timeout=40))\n")
    assert "ran on cpu-2" in cli("submit", config, str(driver)).stdout
    assert "cpu-2" in cli("exec", config, "ray status").stdout
    assert "Stopped " in cli("exec", config, "ray stop").stdout
