"""`get_runtime_context()`: what the calling code runs as (job, task, actor, node, resources)."""

from __future__ import annotations

import json
import os
from typing import Optional

from runtime import client as client_state


class RuntimeContext:
    """Ray's RuntimeContext: ids are hex strings; in a driver the task and actor ids are None."""

    def get_job_id(self) -> str:
        return client_state.connected().job_id

    def get_task_id(self) -> Optional[str]:
        return client_state.task_context.task_id or None

    def get_actor_id(self) -> Optional[str]:
        return client_state.task_context.actor_id or None

    def get_node_id(self) -> str:
        """This process's node: a worker's from its agent, a driver's from the GCS."""
        node_id = os.environ.get("CLUSTER_NODE_ID")
        if node_id:
            return node_id
        client = client_state.connected()
        from runtime.api import cluster_state

        return next((n.node_id for n in cluster_state().nodes
                     if n.address == client.agent_address), "")

    def get_placement_group_id(self) -> Optional[str]:
        return client_state.task_context.placement_group or None

    def get_assigned_resources(self) -> dict:
        return dict(client_state.task_context.resources)

    def get_runtime_env_string(self) -> str:
        return client_state.connected().runtime_env or "{}"

    @property
    def runtime_env(self) -> dict:
        return json.loads(self.get_runtime_env_string())

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """Whether this actor runs in a restarted worker (its constructor ran again)."""
        return client_state.task_context.actor_restarted

    @property
    def namespace(self) -> str:
        return client_state.connected().namespace

    def get_accelerator_ids(self) -> dict:
        return {"GPU": [str(i) for i in client_state.get_gpu_ids()]}

    @property
    def gcs_address(self) -> str:
        return client_state.connected().gcs_address

    @property
    def current_actor(self):
        from runtime.actor import get_actor_handle

        actor_id = self.get_actor_id()
        if actor_id is None:
            raise RuntimeError("current_actor is only available inside an actor")
        return get_actor_handle(actor_id)


def get_runtime_context() -> RuntimeContext:
    client_state.auto_connected()
    return RuntimeContext()
