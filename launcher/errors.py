"""The launcher's error tree.

Every error carries a one-line, user-facing message; the CLI prints it (no traceback) and exits with
the error's exit code. Provider errors are typed so the autoscaler can react to each kind differently
(next zone, next type, backoff, stop, retry).
"""


class LauncherError(Exception):
    """Base of every error the CLI reports as one line."""

    exit_code = 1


class ConfigError(LauncherError):
    """The cluster YAML is invalid. The message names the file and the key path."""

    exit_code = 2


class ClusterNotFound(LauncherError):
    """A command needs a running cluster and there is none under that name."""


class CommandFailed(LauncherError):
    """A command on a node exited non-zero."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class ProviderError(LauncherError):
    """A cloud/provider call failed. Subclasses say how a caller should react."""


class CapacityError(ProviderError):
    """No capacity for this node type here now: try another zone or type."""


class QuotaError(ProviderError):
    """An account limit was hit: back off this node type."""


class AuthError(ProviderError):
    """Credentials are missing or refused: stop with a clear message."""


class InvalidNodeConfig(ProviderError):
    """The provider refused the node configuration: stop with a clear message."""


class TransientError(ProviderError):
    """A passing failure (throttling, timeout): retry with backoff."""


class SSHError(LauncherError):
    """A node could not be reached or used over SSH. `node` and `cause` are kept as data, so a
    caller can show progress (the cause alone) or retry by kind."""

    template = "{node}: {cause}"

    def __init__(self, node: str, cause: str):
        super().__init__(self.template.format(node=node, cause=cause))
        self.node = node
        self.cause = cause

    def __reduce__(self):  # pickles despite the two-argument constructor
        return type(self), (self.node, self.cause)


class SSHUnreachable(SSHError):
    """No SSH session: nothing answers, the connection is refused or dropped, or the proxy command
    failed. Usually passing while a node boots, so waiting for SSH retries it."""


class SSHAuthRefused(SSHError):
    """The node refused the user or the key. Waiting for SSH retries it too: cloud-init installs
    the key some seconds after sshd starts."""


class SSHHostKeyChanged(SSHError):
    """A known host showed a different host key: a replaced machine, or an attack. Never retried."""

    template = "host key of {node} changed: {cause}"


class SSHNoCommonAlgorithm(SSHError):
    """The node's sshd and we share no key-exchange, host key, cipher or MAC algorithm: its
    configuration (KexAlgorithms, HostKeyAlgorithms, Ciphers, MACs) must change. Never retried."""


class SSHKeyFileError(SSHError):
    """The private key file is missing, readable by others, encrypted or unreadable. Never retried."""


class RsyncError(SSHError):
    """Copying files with rsync failed: a missing source, rsync missing here or on the node."""
