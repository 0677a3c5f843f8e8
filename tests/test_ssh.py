"""The SSH command runner and rsync helpers against real sshd processes on loopback addresses."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from launcher.errors import (
    RsyncError,
    SSHAuthRefused,
    SSHHostKeyChanged,
    SSHKeyFileError,
    SSHNoCommonAlgorithm,
    SSHUnreachable,
)
from launcher.rsync import filter_rule
from launcher.ssh import SSHCommandRunner, SSHTarget, remote_command, ssh_command_line
from tests.sshd import (  # noqa: F401 (fixtures)
    assert_loopback,
    free_loopback_ip,
    key_dir,
    make_key,
    ssh_key,
    sshd_node,
)

RELAY = f"{sys.executable} {os.path.join(os.path.dirname(__file__), 'sshd.py')} relay %h %p"


def target(node_or_ip, tmp_path, **overrides) -> SSHTarget:
    """The target of a test node; every test connection goes through here, to a loopback address."""
    fields = dict(host=getattr(node_or_ip, "ip", node_or_ip), user=getattr(node_or_ip, "user", "x"),
                  key_path=getattr(node_or_ip, "key_path", "/nonexistent"),
                  known_hosts=str(tmp_path / "cluster" / "known_hosts"), node_name="head test-node")
    fields.update(overrides)
    assert_loopback(fields["host"])
    return SSHTarget(**fields)


@pytest.fixture
def node(sshd_node):
    return sshd_node()


@pytest.fixture
def runner(node, tmp_path):
    r = SSHCommandRunner(target(node, tmp_path))
    yield r
    r.close()


# --- commands ---------------------------------------------------------------------------------

@pytest.mark.parametrize("command, code, output", [
    ("echo hi", 0, "hi\n"),
    ("echo out; echo err >&2; exit 3", 3, "out\nerr\n"),
    ("printf 'caf\\xc3\\xa9 \\xff'", 0, "café \ufffd"),
    ("printf 'caf\\xc3'; sleep 0.1; printf '\\xa9'", 0, "café"),
    ("cat", 0, ""),  # stdin is at EOF: a command reading it does not hang
    ("kill -9 $$", 255, ""),  # killed by a signal: 255, as OpenSSH's ssh reports it
], ids=["echo", "stderr-and-exit-code", "utf8-and-invalid-bytes", "utf8-split-across-chunks",
        "stdin-closed", "signal"])
def test_run_returns_output_and_exit_code(runner, command, code, output):
    result = runner.run(command)
    assert (result.exit_code, result.output_tail) == (code, output)


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_key_types(node, tmp_path, kind):
    key = make_key(str(tmp_path), kind)
    node.authorize(key + ".pub")
    with_key = SSHCommandRunner(target(node, tmp_path, key_path=key))
    assert with_key.run("echo ok").output_tail == "ok\n"
    with_key.close()


def test_env_reaches_the_command_exactly(runner):
    value = "s3cret 'quoted' \"double\" $(touch /tmp/x) ; \\ \n next line"
    result = runner.run('printf %s "$TOKEN" && printf "|%s" "$OTHER"',
                        env={"TOKEN": value, "OTHER": "2"})
    assert result.output_tail == value + "|2"


def test_env_values_show_in_no_argv_on_the_node(runner):
    result = runner.run('ps -o args -u "$USER"; true', env={"TOKEN": "hunter2-secret"})
    assert "bash --login -c" in result.output_tail and "hunter2" not in result.output_tail


def test_env_values_never_appear_in_errors(runner):
    """The connection dies mid-command (the command kills its sshd): the one-line error names the
    node and the command, not the secret."""
    with pytest.raises(SSHUnreachable) as err:
        runner.run("kill -9 $PPID; sleep 5", env={"TOKEN": "hunter2-secret"})
    message = str(err.value)
    assert "hunter2" not in message and "\n" not in message
    assert message.startswith("head test-node (127.0.0.") and "kill -9 $PPID" in message
    assert runner.run("echo back").output_tail == "back\n"  # a new connection, transparently


def test_invalid_env_name_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match="invalid environment variable name 'A;B'"):
        remote_command("true", {"A;B": "x"})


def test_login_shell_path_applies(node, runner):
    node.write("tools/hello-node", "#!/bin/sh\necho hello from tools\n", 0o755)
    with open(os.path.join(node.home, ".profile"), "a") as f:
        f.write('PATH="$HOME/tools:$PATH"\n')
    assert runner.run("hello-node").output_tail == "hello from tools\n"


def test_output_streams_before_the_command_ends(runner):
    start, chunks = time.monotonic(), []
    runner.run("echo first; sleep 0.6; echo second",
               on_output=lambda text: chunks.append((time.monotonic() - start, text)))
    end = time.monotonic() - start
    assert "".join(text for _, text in chunks) == "first\nsecond\n"
    assert chunks[0][1] == "first\n" and chunks[0][0] < end - 0.4


def test_timeout_returns_124_kills_the_command_and_keeps_the_connection(node, runner):
    runner.run("true")
    start = time.monotonic()
    result = runner.run("echo started; sleep 30", timeout=0.5)
    assert result.exit_code == 124 and result.output_tail == "started\n"
    assert time.monotonic() - start < 1.5
    # GNU timeout on the node kills it too; `sleep 0.5` ends before pgrep looks
    assert runner.run('sleep 0.5; pgrep -u "$USER" -x sleep || echo gone').output_tail == "gone\n"
    assert len(node.connections()) == 1


def test_background_child_holding_the_output_does_not_hang(runner):
    start = time.monotonic()
    result = runner.run("sleep 30 & echo started")
    assert (result.exit_code, result.output_tail) == (0, "started\n")
    assert time.monotonic() - start < 3


def test_one_persistent_connection_and_its_speed(node, runner, tmp_path, capsys):
    n = 20
    start = time.monotonic()
    for i in range(n):
        assert runner.run(f"echo {i}").output_tail == f"{i}\n"
    persistent = (time.monotonic() - start) / n
    assert len(node.connections()) == 1
    start = time.monotonic()
    for i in range(5):
        fresh = SSHCommandRunner(target(node, tmp_path))
        assert fresh.run("echo").exit_code == 0
        fresh.close()
    per_connection = (time.monotonic() - start) / 5
    with capsys.disabled():
        print(f"\n  echo on an open connection: {persistent * 1000:.1f} ms ({1 / persistent:.0f}"
              f" commands/s); with a fresh connection each: {per_connection * 1000:.1f} ms "
              f"({1 / per_connection:.0f} commands/s)")
    assert persistent < per_connection


def test_threads_share_one_connection(node, runner):
    results, errors = {}, []

    def work(i: int) -> None:
        try:
            for j in range(3):
                results[(i, j)] = runner.run("sleep 0.05; echo $I-$J", env={"I": str(i), "J": str(j)})
        except Exception as e:  # reported below, with the thread's inputs
            errors.append((i, e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(r.output_tail == f"{i}-{j}\n" for (i, j), r in results.items()) and len(results) == 48
    assert len(node.connections()) == 1


def test_reconnects_when_the_connection_died(node, runner):
    runner.run("true")
    (first,) = node.connections()
    os.kill(first, 9)
    time.sleep(0.2)
    assert runner.run("echo again").output_tail == "again\n"
    assert node.connections() != [first]


# --- host keys ----------------------------------------------------------------------------------

def test_trust_on_first_use_writes_known_hosts_that_openssh_accepts(node, runner, tmp_path):
    runner.run("true")
    known_hosts = tmp_path / "cluster" / "known_hosts"
    host_key = open(os.path.join(node.dir, "host_ed25519.pub")).read().split()[:2]
    assert known_hosts.read_text().split() == [node.ip, *host_key]
    assert stat.S_IMODE(os.stat(known_hosts.parent).st_mode) == 0o700
    argv = ssh_command_line(runner.target) + ["echo", "from", "openssh"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    assert (proc.returncode, proc.stdout) == (0, "from openssh\n"), proc.stderr


def test_changed_host_key_is_refused(node, runner, tmp_path):
    runner.run("true")
    runner.close()
    node.restart_with_new_host_key()
    with pytest.raises(SSHHostKeyChanged) as err:
        runner.run("true")
    known_hosts = str(tmp_path / "cluster" / "known_hosts")
    assert re.fullmatch(
        rf"host key of head test-node \({node.ip}\) changed: {known_hosts} has ssh-ed25519 "
        rf"SHA256:\S+, the node now shows ssh-ed25519 SHA256:\S+ .*; if the machine was replaced, "
        rf"remove its line from {known_hosts}: ssh-keygen -R '{node.ip}' -f {known_hosts}",
        str(err.value))
    assert open(known_hosts).read().count("\n") == 1  # the new key was not recorded


# --- connection failures: one line naming the node and the cause, within the connect timeout ---

def _silent_listener(ip: str):
    """A port that accepts connections and never says anything, like a node half booted."""
    assert_loopback(ip)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAITs of earlier users
    sock.bind((ip, 22))
    sock.listen(8)
    return sock


def _case(case: str, node, tmp_path, free_ip, request) -> dict:
    """Target fields for each failure case."""
    if case == "missing-key":
        return dict(key_path=str(tmp_path / "no_such_key"))
    if case in ("group-readable-key", "encrypted-key", "not-a-key"):
        key = shutil.copy(node.key_path, tmp_path / "key")
        if case == "encrypted-key":
            subprocess.run(["ssh-keygen", "-q", "-p", "-N", "passphrase", "-f", key], check=True)
        if case == "not-a-key":
            shutil.copy(node.key_path + ".pub", key)
        os.chmod(key, 0o640 if case == "group-readable-key" else 0o600)
        return dict(key_path=str(key))
    if case == "wrong-user":
        return dict(user="ubuntu")
    if case == "wrong-key":
        return dict(key_path=make_key(str(tmp_path), "ed25519"))
    if case == "nothing-listening":
        return dict(host=free_ip)
    if case == "silent-port":
        request.addfinalizer(_silent_listener(free_ip).close)
        return dict(host=free_ip)
    if case == "proxy-not-found":
        return dict(proxy_command="/nonexistent/proxy %h %p")
    if case == "proxy-cannot-connect":
        return dict(proxy_command=RELAY, host=free_ip)
    raise AssertionError(case)


CONNECT_FAILURES = [
    ("missing-key", SSHKeyFileError,
     r"SSH private key \S+/no_such_key not found; set auth.ssh_private_key to a key file"),
    ("group-readable-key", SSHKeyFileError,
     r"SSH private key (\S+) is accessible by others \(mode 640\), which OpenSSH refuses too; "
     r"run: chmod 600 \1"),
    ("encrypted-key", SSHKeyFileError, r"SSH private key \S+ is protected by a passphrase; .*"),
    ("not-a-key", SSHKeyFileError, r"SSH private key \S+ is not an OpenSSH or PEM private key .*"),
    ("wrong-user", SSHAuthRefused,
     r"ubuntu@127\.0\.0\.\d+:22 refused the key \S+: check auth.ssh_user, and that the node "
     r"authorizes this key \(~ubuntu/.ssh/authorized_keys\)"),
    ("wrong-key", SSHAuthRefused, r"sshnode\d+@127\.0\.0\.\d+:22 refused the key \S+/id_ed25519: .*"),
    ("nothing-listening", SSHUnreachable,
     r"connection refused by 127\.0\.0\.\d+:22 \(sshd not running yet, or a firewall rejects "
     r"port 22\)"),
    ("silent-port", SSHUnreachable,
     r"no SSH banner from 127\.0\.0\.\d+:22 within [\d.]+s \(the port is open but sshd does not "
     r"answer: node still booting\?\)"),
    ("proxy-not-found", SSHUnreachable,
     r"proxy command `/nonexistent/proxy 127\.0\.0\.\d+ 22` exited with code 127: "
     r".*(No such file or directory|not found)"),  # bash | dash as /bin/sh
    ("proxy-cannot-connect", SSHUnreachable,
     r"proxy command `.* relay 127\.0\.0\.\d+ 22` exited with code 1: relay: cannot connect to "
     r"127\.0\.0\.\d+:22: \[Errno 111\] Connection refused"),
]


@pytest.mark.parametrize("case, error, cause", CONNECT_FAILURES, ids=[c[0] for c in CONNECT_FAILURES])
def test_connect_failure_is_one_line_naming_node_and_cause(
        node, tmp_path, free_loopback_ip, capfd, request, case, error, cause):
    connect_timeout = 1.5
    t = target(node, tmp_path, **_case(case, node, tmp_path, free_loopback_ip, request))
    r = SSHCommandRunner(t, connect_timeout=connect_timeout)
    start = time.monotonic()
    with pytest.raises(error) as err:
        r.run("true")
    assert time.monotonic() - start < connect_timeout + 0.5
    assert re.fullmatch(rf"head test-node \({t.host}\): {cause}", str(err.value)), str(err.value)
    assert "Traceback" not in capfd.readouterr().err  # paramiko's own logging stays quiet


def test_proxy_command_reaches_the_node(node, tmp_path):
    r = SSHCommandRunner(target(node, tmp_path, proxy_command=RELAY))
    assert r.run("echo via proxy").output_tail == "via proxy\n"
    argv = ssh_command_line(r.target) + ["echo", "openssh via proxy"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    assert proc.stdout == "openssh via proxy\n", proc.stderr
    proxy = r.connect().sock.process
    r.close()
    assert proxy.poll() is not None  # the proxy process ended and was reaped


# --- waiting for SSH --------------------------------------------------------------------------

def test_wait_for_ssh_waits_for_a_late_sshd(sshd_node, tmp_path):
    late = sshd_node(delay_s=1.0)
    attempts = []
    r = SSHCommandRunner(target(late, tmp_path))
    start = time.monotonic()
    r.wait_for_ssh(10, on_attempt=lambda n, cause: attempts.append((n, cause)))
    assert 0.9 < time.monotonic() - start < 5
    assert attempts[0] == (1, f"connection refused by {late.ip}:22 (sshd not running yet, or a "
                              "firewall rejects port 22)")
    assert [n for n, _ in attempts] == list(range(1, len(attempts) + 1))
    assert r.run("echo up").output_tail == "up\n"
    r.close()


def test_wait_ready_retries_a_refused_key_until_it_is_installed(sshd_node, tmp_path):
    """Cloud VMs: sshd answers before cloud-init has installed the key."""
    node = sshd_node()
    key = make_key(str(tmp_path), "ecdsa")
    threading.Timer(1.0, node.authorize, args=(key + ".pub",)).start()
    r = SSHCommandRunner(target(node, tmp_path, key_path=key))
    r.wait_ready(10)
    assert r.run("echo in").output_tail == "in\n"
    r.close()


def test_wait_for_ssh_gives_up_with_the_last_error(node, free_loopback_ip, tmp_path):
    r = SSHCommandRunner(target(node, tmp_path, host=free_loopback_ip))
    start = time.monotonic()
    with pytest.raises(SSHUnreachable) as err:
        r.wait_for_ssh(1.2)
    assert 1.2 <= time.monotonic() - start < 2
    assert re.fullmatch(r"head test-node \(127\.0\.0\.\d+\): no SSH connection after 1\.2s \(\d "
                        r"attempts\); last error: connection refused by .*", str(err.value))


def test_wait_for_ssh_fails_at_once_on_a_key_file_problem(node, tmp_path):
    r = SSHCommandRunner(target(node, tmp_path, key_path=str(tmp_path / "missing")))
    start = time.monotonic()
    with pytest.raises(SSHKeyFileError):
        r.wait_for_ssh(30)
    assert time.monotonic() - start < 0.5


# --- files ------------------------------------------------------------------------------------

def _tree(root) -> None:
    files = {"a.txt": b"alpha\n", "sub/b.bin": os.urandom(300_000), "sub/deeper/c": b"",
             "with space/d e.txt": b"spaces\n", "build/out.o": b"obj", "x.log": b"log",
             "sub/y.log": b"log", "keep.tmp": b"tmp", ".gitignore": b"*.log\nbuild/\n"}
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    os.chmod(root / "a.txt", 0o640)


def _hashes(root) -> dict:
    return {os.path.relpath(os.path.join(d, f), root): hashlib.sha256(
        open(os.path.join(d, f), "rb").read()).hexdigest()
        for d, _, files in os.walk(root) for f in files}


def test_put_and_get_a_tree_round_trip_byte_for_byte(node, runner, tmp_path):
    _tree(tmp_path / "src")
    runner.put(str(tmp_path / "src"), "~/deep/dst")
    assert _hashes(os.path.join(node.home, "deep/dst")) == _hashes(tmp_path / "src")
    runner.get("~/deep/dst", str(tmp_path / "back" / "dst"))
    assert _hashes(tmp_path / "back" / "dst") == _hashes(tmp_path / "src")
    assert stat.S_IMODE(os.stat(tmp_path / "back/dst/a.txt").st_mode) == 0o640


def test_put_and_get_a_file_creating_parents(node, runner, tmp_path):
    (tmp_path / "f.bin").write_bytes(b"\x00\x01payload")
    runner.put(str(tmp_path / "f.bin"), "~/a/b/g.bin")
    runner.get("a/b/g.bin", str(tmp_path / "x" / "y" / "g.bin"))
    assert (tmp_path / "x/y/g.bin").read_bytes() == b"\x00\x01payload"


@pytest.mark.parametrize("filters", [["dir-merge,- .gitignore"], [".gitignore"]],
                         ids=["rsync-rule", "ray-file-name"])
def test_put_honours_excludes_and_gitignore_filter(node, runner, tmp_path, filters):
    _tree(tmp_path / "src")
    runner.put(str(tmp_path / "src"), "~/dst", excludes=["*.tmp"], filters=filters)
    assert sorted(_hashes(os.path.join(node.home, "dst"))) == [
        ".gitignore", "a.txt", "sub/b.bin", "sub/deeper/c", "with space/d e.txt"]


def test_filter_rule_forms():
    assert filter_rule(".gitignore") == "dir-merge,- .gitignore"
    assert filter_rule("- *.pyc") == "- *.pyc"


RSYNC_FAILURES = [
    ("local-source-missing", r"cannot upload (\S+)/nope: no such file or directory"),
    ("remote-source-missing", r"cannot download ~/nope: no such file or directory there"),
    ("rsync-missing-on-node", r"rsync is not installed on the node; install it there first, e\.g\. "
                              r"with `sudo apt-get install -y rsync` in initialization_commands"),
]


@pytest.mark.parametrize("case, cause", RSYNC_FAILURES, ids=[c[0] for c in RSYNC_FAILURES])
def test_rsync_failures_are_one_line(node, runner, tmp_path, case, cause):
    if case == "rsync-missing-on-node":  # the non-login shell that runs rsync finds only bash
        os.makedirs(os.path.join(node.home, "only-bash"))
        os.symlink("/bin/bash", os.path.join(node.home, "only-bash", "bash"))
        node.write(".ssh/environment", f"PATH={node.home}/only-bash\n", 0o600)
    with pytest.raises(RsyncError) as err:
        if case == "local-source-missing":
            runner.put(str(tmp_path / "nope"), "~/x")
        else:
            runner.get("~/nope" if case == "remote-source-missing" else "~/.profile",
                       str(tmp_path / "here"))
    assert re.fullmatch(rf"head test-node \({node.ip}\): {cause}", str(err.value)), str(err.value)


# --- algorithms: servers configured by hand ----------------------------------------------------

# ssh-audit's hardening guide for OpenSSH 9.x (less its Debian-only GSSAPI key exchanges)
HARDENED = {
    "KexAlgorithms": "sntrup761x25519-sha512@openssh.com,curve25519-sha256,"
                     "curve25519-sha256@libssh.org,diffie-hellman-group16-sha512,"
                     "diffie-hellman-group18-sha512,diffie-hellman-group-exchange-sha256",
    "Ciphers": "chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com,"
               "aes256-ctr,aes192-ctr,aes128-ctr",
    "MACs": "hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com,umac-128-etm@openssh.com",
    "RequiredRSASize": "3072",
    "HostKeyAlgorithms": "sk-ssh-ed25519-cert-v01@openssh.com,ssh-ed25519-cert-v01@openssh.com,"
                         "rsa-sha2-512-cert-v01@openssh.com,rsa-sha2-256-cert-v01@openssh.com,"
                         "sk-ssh-ed25519@openssh.com,ssh-ed25519,rsa-sha2-512,rsa-sha2-256",
    "CASignatureAlgorithms": "sk-ssh-ed25519@openssh.com,ssh-ed25519,rsa-sha2-512,rsa-sha2-256",
    "PubkeyAcceptedAlgorithms": "sk-ssh-ed25519-cert-v01@openssh.com,"
                                "ssh-ed25519-cert-v01@openssh.com,sk-ssh-ed25519@openssh.com,"
                                "ssh-ed25519,rsa-sha2-512-cert-v01@openssh.com,"
                                "rsa-sha2-256-cert-v01@openssh.com,rsa-sha2-512,rsa-sha2-256",
}


def test_a_server_that_names_curve25519_only_by_its_rfc_name_is_reached(sshd_node, tmp_path):
    """paramiko knows curve25519-sha256 only as curve25519-sha256@libssh.org."""
    node = sshd_node(options={"KexAlgorithms": "curve25519-sha256"})
    r = SSHCommandRunner(target(node, tmp_path))
    assert r.run("echo rfc 8731").output_tail == "rfc 8731\n"
    r.close()


def test_a_hardened_server_runs_commands_and_takes_files(sshd_node, tmp_path):
    node = sshd_node(options=HARDENED)
    r = SSHCommandRunner(target(node, tmp_path))
    assert r.run("echo hardened").output_tail == "hardened\n"
    (tmp_path / "f.txt").write_text("through rsync\n")
    r.put(str(tmp_path / "f.txt"), "~/in/f.txt")  # OpenSSH's ssh, with the runner's options
    assert r.run("cat in/f.txt").output_tail == "through rsync\n"
    r.close()


NO_COMMON = [
    ("key-exchange", "KexAlgorithms", "sntrup761x25519-sha512@openssh.com",
     r"(\S+, )*curve25519-sha256, curve25519-sha256@libssh\.org, (\S+, )*\S+"),
    ("cipher", "Ciphers", "chacha20-poly1305@openssh.com", r"(\S+, )*aes128-ctr, (\S+, )*\S+"),
    ("MAC", "MACs", "umac-128-etm@openssh.com",
     r"(\S+, )*hmac-sha2-256-etm@openssh\.com, (\S+, )*\S+"),
]


@pytest.mark.parametrize("kind, keyword, offer, ours", NO_COMMON, ids=[c[0] for c in NO_COMMON])
def test_no_common_algorithm_is_one_line_with_both_offers_and_not_retried(
        sshd_node, tmp_path, capfd, kind, keyword, offer, ours):
    node = sshd_node(options={keyword: offer})
    r = SSHCommandRunner(target(node, tmp_path), connect_timeout=1.5)
    start = time.monotonic()
    with pytest.raises(SSHNoCommonAlgorithm) as err:
        r.wait_for_ssh(10)  # a configuration mismatch does not pass by waiting
    assert time.monotonic() - start < 1.5
    assert re.fullmatch(
        rf"head test-node \({node.ip}\): no common {kind} algorithm with {node.ip}:22: the "
        rf"server offers {re.escape(offer)}; we offer {ours}", str(err.value)), str(err.value)
    assert "Traceback" not in capfd.readouterr().err


# --- OpenSSH command lines ---------------------------------------------------------------------

def test_ssh_command_line_options(tmp_path):
    t = target("127.0.0.9", tmp_path, user="u", key_path="/k", port=2222, proxy_command="nc %h %p")
    argv = ssh_command_line(t, ["-N"], connect_timeout=7)
    assert argv[:9] == ["ssh", "-F", "/dev/null", "-i", "/k", "-p", "2222", "-l", "u"]
    assert argv[-2:] == ["-N", "127.0.0.9"]
    for option in ["IdentitiesOnly=yes", "BatchMode=yes", "StrictHostKeyChecking=yes",
                   f'UserKnownHostsFile="{tmp_path}/cluster/known_hosts"', "ConnectTimeout=7",
                   "ProxyCommand=nc %h %p"]:
        assert option in argv
    assert t.known_hosts_name == "[127.0.0.9]:2222"


def test_shell_argv_runs_a_command_in_a_login_shell(node, runner):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = runner.shell_argv("echo $0 in login shell", port_forwards=[port])
    assert argv[-1].startswith("bash --login -c ") and f"-L{port}:{node.ip}:{port}" in argv
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=20)
    assert proc.stdout.replace("\r", "") == "bash in login shell\n", proc.stderr
