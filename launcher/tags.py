"""Node tags: the node's state lives on the provider so any process can crash and resume."""

import re

TAG_CLUSTER_NAME = "cluster-name"
TAG_NODE_KIND = "node-kind"  # head | worker
TAG_NODE_TYPE = "node-type"  # a key of available_node_types
TAG_NODE_STATUS = "node-status"  # the lifecycle state (autoscaler.lifecycle writes it)
TAG_STATE_SINCE = "node-state-since"  # unix seconds the state was entered
TAG_INSTALL_STAGE = "install-stage"  # what the updater does now, for `cluster status`
TAG_LAUNCH_REQUEST = "launch-request"  # the autoscaler's launch that created the node
TAG_LAUNCH_HASH = "launch-hash"  # node_config + auth: the node must be replaced when it changes
# One tag per updater stage; a stage whose inputs hash to its tag's value is skipped.
TAG_FILES_HASH = "files-hash"  # file mount contents
TAG_SETUP_HASH = "setup-hash"  # initialization + setup commands
TAG_RUNTIME_HASH = "runtime-hash"  # the installed runtime's version (providers that install it)
TAG_START_HASH = "start-hash"  # start commands

KIND_HEAD = "head"
KIND_WORKER = "worker"

STAGE_WAITING_FOR_SSH = "waiting-for-ssh"
STAGE_SYNCING_FILES = "syncing-files"
STAGE_SETTING_UP = "setting-up"
STAGE_INSTALLING_RUNTIME = "installing-runtime"
STAGE_STARTING = "starting"
STAGE_DONE = "done"


def dns_name(text: str) -> str:
    """`text` as clouds allow in resource and host names (lowercase letters, digits, `-`): a
    cluster name may hold `_` or `.` and capitals, as Ray's may (tags keep it as it is)."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "cluster"
