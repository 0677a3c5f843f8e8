"""The local provider against real processes: each test's nodes live under its own tmp_path and are
terminated (by their recorded process groups) when it ends, pass or fail."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from launcher.errors import ConfigError, ProviderError
from launcher.providers import make_provider
from launcher.providers import local as local_module
from launcher.providers.local_node import proc_stat

CLUSTER = "test"


def _provider(state_dir, cluster=CLUSTER):
    return make_provider({"type": "local", "state_dir": str(state_dir)}, cluster)


def _records(state_dir) -> dict:
    path = state_dir / "nodes.json"
    return json.loads(path.read_text())["nodes"] if path.exists() else {}


def _alive(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat.state not in "ZX"  # nothing reaps orphans here: zombies


def _wait_until(predicate, timeout=5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _start_sleeper(provider, node) -> int:
    """A daemon on the node, as `cluster start` leaves behind; returns its pid."""
    result = provider.command_runner(node).run("nohup sleep 300 >/dev/null 2>&1 & echo $!")
    return int(result.output_tail)


@pytest.fixture
def state_dir(tmp_path):
    yield tmp_path
    records = _records(tmp_path).values()
    for cluster in {r["cluster_name"] for r in records}:
        ids = [r["node_id"] for r in records if r["cluster_name"] == cluster]
        _provider(tmp_path, cluster).terminate(ids)


@pytest.fixture
def provider(state_dir):
    return _provider(state_dir)


@pytest.fixture
def node(provider):
    [node_id] = provider.create("cpu", {}, {"node-kind": "worker"}, 1)
    return node_id


def test_create_gives_distinct_loopback_ips_and_tags(state_dir, provider):
    workers = provider.create("cpu", {}, {"node-kind": "worker"}, 2)
    [head] = provider.create("head", {}, {"node-kind": "head", "node-type": "ignored"}, 1)
    ips = [provider.internal_ip(n) for n in workers + [head]]
    assert ips == ["127.0.1.2", "127.0.1.3", "127.0.1.4"]
    assert provider.external_ip(head) == "127.0.1.4"
    assert provider.node_tags(head) == {
        "node-kind": "head",
        "node-type": "head",
        "cluster-name": CLUSTER,
    }
    assert sorted(provider.nodes({})) == sorted(workers + [head])
    assert sorted(provider.nodes({"node-kind": "worker"})) == sorted(workers)
    assert provider.nodes({"node-kind": "worker", "node-type": "gpu"}) == []
    other = _provider(state_dir, "other")
    assert other.nodes({}) == []
    [other_node] = other.create("cpu", {}, {}, 1)
    assert other.internal_ip(other_node) == "127.0.1.5"  # unique across clusters


def test_run_reports_output_exit_code_env_and_cwd(state_dir, monkeypatch):
    monkeypatch.setenv("CLUSTER_LEAK", "from the launcher")
    provider = _provider(state_dir)
    [node_id] = provider.create("cpu", {}, {}, 1)
    node_dir = _records(state_dir)[node_id]["node_dir"]
    chunks = []
    result = provider.command_runner(node_id).run(
        'echo "$HOME|$CLUSTER_NODE_IP|$CLUSTER_NODE_ID|$CLUSTER_NODE_TYPE|$EXTRA"; '
        'echo "${CLUSTER_LEAK-unset}|$CLUSTER_LOCAL_STATE_DIR"; '
        "pwd; command -v python; echo oops >&2; exit 7",
        env={"EXTRA": "extra value"},
        on_output=chunks.append,
    )
    assert result.exit_code == 7
    assert result.output_tail == "".join(chunks)
    assert result.output_tail.splitlines() == [
        f"{node_dir}|127.0.1.2|{node_id}|cpu|extra value",
        f"unset|{state_dir}",
        node_dir,
        os.path.join(os.path.dirname(sys.executable), "python"),
        "oops",
    ]


def test_output_tail_keeps_the_last_4_kib(provider, node):
    result = provider.command_runner(node).run("seq 1 5000")
    assert len(result.output_tail) == 4096
    assert result.output_tail.endswith("4999\n5000\n")


def test_timeout_kills_the_command_and_its_children(provider, node):
    runner = provider.command_runner(node)
    chunks = []
    start = time.monotonic()
    result = runner.run("sleep 30 & echo $!; wait", timeout=0.5, on_output=chunks.append)
    assert result.exit_code == 124
    assert time.monotonic() - start < 5
    assert _wait_until(lambda: not _alive(int("".join(chunks))))
    assert runner.run("true").exit_code == 0  # the node itself lives on


def test_commands_run_concurrently(provider, node):
    runner = provider.command_runner(node)
    results = {}

    def run(i):
        results[i] = runner.run(f"sleep 0.5; echo {i}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - start < 3
    assert {i: r.output_tail for i, r in results.items()} == {i: f"{i}\n" for i in range(8)}


def test_sighup_spares_the_supervisor_but_not_its_commands(state_dir, provider, node):
    os.kill(_records(state_dir)[node]["pgid"], signal.SIGHUP)  # only the supervisor
    result = provider.command_runner(node).run("grep SigIgn /proc/$$/status")
    assert result.exit_code == 0
    assert int(result.output_tail.split()[1], 16) & (1 << (signal.SIGHUP - 1)) == 0


SERVER = (
    "import os, socket, time; s = socket.socket(); s.bind((os.environ['CLUSTER_NODE_IP'], 0)); "
    "s.listen(); open('port.tmp', 'w').write(str(s.getsockname()[1])); "
    "os.rename('port.tmp', 'port'); time.sleep(300)"
)


def test_daemons_outlive_their_command_until_terminate(state_dir, provider, node):
    runner = provider.command_runner(node)
    ip = provider.internal_ip(node)
    node_dir = _records(state_dir)[node]["node_dir"]
    server = runner.run(f'nohup python -c "{SERVER}" >/dev/null 2>&1 & echo $!')
    pids = [_start_sleeper(provider, node), int(server.output_tail)]
    port_file = os.path.join(node_dir, "port")
    assert _wait_until(lambda: os.path.exists(port_file))
    assert ipaddress.ip_address(ip).is_loopback  # tests only ever connect to loopback
    socket.create_connection((ip, int(open(port_file).read())), timeout=5).close()
    assert all(_alive(pid) for pid in pids)

    provider.terminate([node, "local-unknown"])
    assert _wait_until(lambda: not any(_alive(pid) for pid in pids))
    assert not os.path.exists(node_dir)
    assert node not in _records(state_dir)
    assert provider.nodes({}) == []
    assert not os.path.exists(state_dir / "clusters" / CLUSTER)


def test_killed_supervisor_means_a_dead_node(state_dir, provider, node):
    leftover = _start_sleeper(provider, node)
    record = _records(state_dir)[node]
    os.kill(record["pgid"], signal.SIGKILL)  # only the supervisor: the VM "crashed"
    assert _wait_until(lambda: not _alive(record["pgid"]))
    assert _alive(leftover)
    assert provider.nodes({}) == []
    assert _wait_until(lambda: not _alive(leftover))
    assert not os.path.exists(record["node_dir"])
    assert _records(state_dir) == {}


def test_removed_node_dir_ends_the_node(state_dir, provider, node):
    leftover = _start_sleeper(provider, node)
    record = _records(state_dir)[node]
    shutil.rmtree(record["node_dir"])  # e.g. its creator crashed before it recorded the pgid
    assert _wait_until(lambda: not _alive(record["pgid"]) and not _alive(leftover))
    assert provider.nodes({}) == []


CREATE_SCRIPT = """
import json, sys
from launcher.providers import make_provider
provider = make_provider({"type": "local", "state_dir": sys.argv[1]}, "test")
print(json.dumps(provider.create("cpu", {}, {}, 3)))
"""


def test_concurrent_creates_from_two_processes(state_dir, provider):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CREATE_SCRIPT, str(state_dir)], stdout=subprocess.PIPE
        )
        for _ in range(2)
    ]
    try:
        outputs = [proc.communicate(timeout=60)[0] for proc in procs]
    finally:
        for proc in procs:  # by the pid we started, whatever happened
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [proc.returncode for proc in procs] == [0, 0]
    created = json.loads(outputs[0]) + json.loads(outputs[1])
    assert sorted(provider.nodes({})) == sorted(created)
    assert len({provider.internal_ip(n) for n in created}) == 6
    assert all(provider.command_runner(n).run("true").exit_code == 0 for n in created)


def test_state_file_is_always_valid_json(state_dir, provider):
    provider.create("cpu", {}, {}, 1)  # the file exists from here on
    done = threading.Event()
    reads = []

    def read_repeatedly():
        while not done.is_set():
            reads.append(json.loads((state_dir / "nodes.json").read_text()))

    reader = threading.Thread(target=read_repeatedly)
    reader.start()
    try:
        provider.terminate(provider.create("cpu", {}, {}, 4))
    finally:
        done.set()
        reader.join()
    assert len(reads) > 1


def test_put_and_get_files_and_directories(tmp_path, provider, node):
    runner = provider.command_runner(node)
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "b.txt").write_text("beta")
    runner.put(str(tmp_path / "a.txt"), "~/deep/a.txt")
    runner.put(str(tmp_path / "tree"), "copied")
    result = runner.run("cat deep/a.txt; echo; find copied -type f; cat copied/sub/b.txt")
    assert result.output_tail == "alpha\ncopied/sub/b.txt\nbeta"
    runner.get("~/deep/a.txt", str(tmp_path / "back" / "a.txt"))
    runner.get("copied", str(tmp_path / "back" / "tree"))
    assert (tmp_path / "back" / "a.txt").read_text() == "alpha"
    assert (tmp_path / "back" / "tree" / "sub" / "b.txt").read_text() == "beta"


def test_set_tags_merges(provider, node):
    provider.set_tags(node, {"node-status": "running", "launch-hash": "abc"})
    provider.set_tags(node, {"node-status": "install-failed"})
    tags = provider.node_tags(node)
    assert tags["node-status"] == "install-failed" and tags["launch-hash"] == "abc"
    assert provider.nodes({"node-status": "install-failed"}) == [node]


def test_unknown_node_id_is_named(provider):
    with pytest.raises(ProviderError, match="local-nope"):
        provider.command_runner("local-nope")
    with pytest.raises(ProviderError, match="local-nope"):
        provider.set_tags("local-nope", {})


def test_deep_state_dir_still_fits_a_unix_socket(tmp_path):
    deep = tmp_path / ("d" * 120)
    provider = _provider(deep)
    try:
        [node_id] = provider.create("cpu", {}, {}, 1)
        assert provider.command_runner(node_id).run("echo ok").output_tail == "ok\n"
    finally:
        provider.terminate(provider.nodes({}))


@pytest.mark.parametrize(
    "executable", ["/nonexistent/python", "/bin/false"], ids=["spawn-fails", "supervisor-exits"]
)
def test_failed_create_leaves_nothing(state_dir, provider, monkeypatch, executable):
    monkeypatch.setattr(local_module.sys, "executable", executable)
    with pytest.raises(ProviderError, match="supervisor"):
        provider.create("cpu", {}, {}, 2)
    assert _records(state_dir) == {}
    assert not os.path.exists(state_dir / "clusters" / CLUSTER)


@pytest.mark.parametrize("config", [{"type": "nope"}, {}], ids=["unknown-type", "missing-type"])
def test_make_provider_rejects_unknown_type(config):
    expected = (
        r"^provider\.type: unknown provider .* \(expected one of: local, ssh, aws, gcp, azure\)"
    )
    with pytest.raises(ConfigError, match=expected):
        make_provider(config, CLUSTER)


def test_cluster_name_must_be_a_plain_directory_name(tmp_path):
    with pytest.raises(ConfigError, match=r"^cluster_name: '\.\./x'"):
        _provider(tmp_path, "../x")


def test_an_address_something_listens_on_is_not_given_to_a_node():
    from launcher.providers.local import _free_ip

    first = _free_ip({})
    with socket.socket() as taken:  # another state root's head, say, already uses it
        taken.bind((first, 0))
        taken.listen()
        assert _free_ip({}) not in ("", first)
    v6 = socket.socket(socket.AF_INET6)
    with v6:  # gRPC listens on ::ffff:127.0.1.x
        v6.bind((f"::ffff:{first}", 0))
        v6.listen()
        assert _free_ip({}) != first
