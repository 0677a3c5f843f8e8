"""Where a node's runtime keeps its state: ~/.cluster on that node.

`session.json` says how to reach this node's runtime (GCS and node agent addresses, process ids),
so `cluster stop` and `init(address="auto")` find it. The token file is mode 0600.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

TOKEN_ENV = "CLUSTER_AUTH_TOKEN"
AUTOSCALER_STATUS_KEY = "autoscaler:status"  # GCS KV: what the autoscaler last decided (JSON)


RUNTIME_DIR_ENV = "CLUSTER_RUNTIME_DIR"


def runtime_dir() -> Path:
    """~/.cluster, unless $CLUSTER_RUNTIME_DIR names another place (a driver's private cluster)."""
    return Path(os.environ.get(RUNTIME_DIR_ENV) or os.path.expanduser("~/.cluster"))


def logs_dir() -> Path:
    return runtime_dir() / "logs"


@dataclass
class Session:
    gcs_address: str
    agent_address: str
    node_id: str
    node_ip: str
    is_head: bool
    pids: dict = field(default_factory=dict)  # process name -> pid, stopped by `cluster stop`
    gcs_storage: str = ""  # the head's: where its GCS keeps its tables (runtime.gcs_store URL)


def session_path() -> Path:
    return runtime_dir() / "session.json"


def write_session(session: Session) -> None:
    path = session_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(session), indent=2))
    os.replace(tmp, path)


def read_session() -> Optional[Session]:
    try:
        return Session(**json.loads(session_path().read_text()))
    except FileNotFoundError:
        return None


def token_path() -> Path:
    return runtime_dir() / "token"


def write_token(token: str) -> None:
    path = token_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)


def new_token() -> str:
    return secrets.token_hex(32)


def read_token(token_file: Optional[str] = None) -> Optional[str]:
    """The cluster token: an explicit file, else $CLUSTER_AUTH_TOKEN, else this node's token file."""
    if token_file:
        return Path(os.path.expanduser(token_file)).read_text().strip()
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    try:
        return token_path().read_text().strip()
    except FileNotFoundError:
        return None
