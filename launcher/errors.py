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
