"""The `aws` provider: EC2 instances, their state in EC2 tags (launcher.tags).

- node_config is passed to RunInstances as given (InstanceType, ImageId, SecurityGroupIds,
  IamInstanceProfile, BlockDeviceMappings, KeyName, InstanceMarketOptions, LaunchTemplate,
  NetworkInterfaces, ...), except SubnetIds: the subnets are tried in order, the next one after a
  capacity error. Every boto3/botocore error is raised as a typed one-line error (aws_call).
- Nodes are the cluster's pending and running instances, found by the cluster-name tag.
- provider.cache_stopped_nodes: terminate stops on-demand instances; create restarts stopped ones of
  the same type and launch hash before launching new ones. Spot instances are always terminated.
- provider.use_internal_ips: SSH to private IPs (from inside the VPC); otherwise to public IPs.
  The head's own autoscaler (CLUSTER_NODE_ID is set there) always uses private IPs.
- Endpoint, region and credentials are boto3's settings (AWS_ENDPOINT_URL, AWS_PROFILE, ...).

boto3 is imported only by this module and aws_bootstrap/aws_catalog. See docs/aws.md.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Mapping, Optional, Sequence

from launcher import tags as T
from launcher.errors import CapacityError, ProviderError
from launcher.providers.aws_catalog import aws_call, ec2_client
from launcher.providers.base import Changes, NodeProvider
from launcher.ssh import SSHRunners

LIVE_STATES = ["pending", "running"]
TERMINATE_CHUNK = 1000  # TerminateInstances/StopInstances take at most 1000 ids per call


class AWSNodeProvider(NodeProvider):
    runtime_extras = ("aws",)  # the head's autoscaler calls EC2 through boto3

    def __init__(self, provider_config: Mapping, cluster_name: str, auth: Optional[Mapping] = None):
        super().__init__(provider_config, cluster_name, auth)
        self.region = provider_config["region"]
        self.cache_stopped = bool(provider_config.get("cache_stopped_nodes", False))
        self.use_internal_ips = bool(provider_config.get("use_internal_ips", False))
        self._ec2 = None
        self._instances: dict[str, dict] = {}  # id -> last describe result (tags as a dict)
        self._runners = SSHRunners(cluster_name, self.auth)
        self._lock = threading.Lock()
        self.sleep: Callable[[float], None] = time.sleep  # throttling backoff; tests replace it

    @property
    def ec2(self):
        if self._ec2 is None:
            self._ec2 = ec2_client(self.region)
        return self._ec2

    def _call(self, operation: str, what: str, **kwargs):
        return aws_call(getattr(self.ec2, operation), what, sleep=self.sleep, **kwargs)

    def bootstrap(self, config, echo: Callable[[str], None] = lambda _: None,
                  dry_run: bool = False):
        from launcher.providers.aws_bootstrap import bootstrap

        config = bootstrap(config, Changes(echo, apply=not dry_run))
        self.auth = dict(config.auth)
        return config

    # --- listing -------------------------------------------------------------------------------

    def _describe(self, filters: list, states: Sequence[str] = LIVE_STATES) -> list[dict]:
        filters = [{"Name": f"tag:{T.TAG_CLUSTER_NAME}", "Values": [self.cluster_name]},
                   {"Name": "instance-state-name", "Values": list(states)}, *filters]
        pages = self._call("describe_instances", "listing instances", Filters=filters)
        instances = []
        while True:
            for reservation in pages["Reservations"]:
                instances += reservation["Instances"]
            if not pages.get("NextToken"):
                break
            pages = self._call("describe_instances", "listing instances", Filters=filters,
                               NextToken=pages["NextToken"])
        with self._lock:
            for instance in instances:
                instance["TagMap"] = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                self._instances[instance["InstanceId"]] = instance
        return instances

    def nodes(self, tag_filters: Mapping[str, str]) -> list[str]:
        filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in sorted(tag_filters.items())]
        return sorted(i["InstanceId"] for i in self._describe(filters))

    def preempted(self, node_ids: Sequence[str]) -> dict[str, str]:
        """Spot instances EC2 interrupted (terminated or stopped, its StateReason says so)."""
        if not node_ids:
            return {}
        found = self._describe([{"Name": "instance-id", "Values": sorted(node_ids)}],
                               states=["pending", "running", "shutting-down", "terminated",
                                       "stopping", "stopped"])
        return {i["InstanceId"]: i["StateReason"].get("Message") or i["StateReason"]["Code"]
                for i in found if i.get("StateReason", {}).get("Code") in SPOT_INTERRUPTIONS}

    def on_demand(self, node_config: Mapping) -> Optional[Mapping]:
        if not _is_spot(node_config):
            return None
        return {k: v for k, v in node_config.items() if k != "InstanceMarketOptions"}

    def _instance(self, node_id: str) -> dict:
        with self._lock:
            instance = self._instances.get(node_id)
        if instance is None:
            found = self._describe([{"Name": "instance-id", "Values": [node_id]}],
                                   states=["pending", "running", "stopping", "stopped"])
            if not found:
                raise ProviderError(f"{node_id} is not an instance of cluster {self.cluster_name}")
            instance = found[0]
        return instance

    def node_tags(self, node_id: str) -> dict[str, str]:
        return dict(self._instance(node_id)["TagMap"])

    def internal_ip(self, node_id: str) -> str:
        ip = self._with_ip(node_id, "PrivateIpAddress", attempts=30)
        if not ip:
            raise ProviderError(f"{node_id} has no private IP after 30 s")
        return ip

    def external_ip(self, node_id: str) -> Optional[str]:
        return self._with_ip(node_id, "PublicIpAddress", attempts=0)

    def _with_ip(self, node_id: str, key: str, attempts: int) -> Optional[str]:
        """A pending instance may not have its address yet: describe it again, once a second for
        up to `attempts` seconds, until it does."""
        instance = self._instance(node_id)
        for _ in range(attempts):
            if instance.get(key):
                break
            with self._lock:
                self._instances.pop(node_id, None)
            self.sleep(1.0)
            instance = self._instance(node_id)
        return instance.get(key)

    # --- changing ------------------------------------------------------------------------------

    def create(self, node_type: str, node_config: Mapping, tags: Mapping[str, str],
               count: int) -> list[str]:
        tags = {**tags, T.TAG_CLUSTER_NAME: self.cluster_name, T.TAG_NODE_TYPE: node_type}
        ids = []
        if self.cache_stopped and not _is_spot(node_config):
            ids = self._restart_stopped(tags, count)
        if count > len(ids):
            ids += self._run(node_config, tags, count - len(ids))
        return ids

    def _restart_stopped(self, tags: Mapping[str, str], count: int) -> list[str]:
        """Start up to `count` stopped instances of this node type and launch hash."""
        match = [{"Name": f"tag:{k}", "Values": [tags[k]]}
                 for k in (T.TAG_NODE_TYPE, T.TAG_NODE_KIND, T.TAG_LAUNCH_HASH) if k in tags]
        stopped = sorted(i["InstanceId"] for i in self._describe(match, states=["stopped"]))[:count]
        if stopped:
            what = f"node type {tags[T.TAG_NODE_TYPE]}: restarting stopped instances"
            self._call("start_instances", what, InstanceIds=stopped)
            self._call("create_tags", what, Resources=stopped, Tags=_tag_list(tags))
            # the disk kept what setup installed, but nothing runs after a boot: start again
            self._call("delete_tags", what, Resources=stopped, Tags=[{"Key": T.TAG_START_HASH}])
            with self._lock:
                for node_id in stopped:
                    self._instances.pop(node_id, None)
        return stopped

    def _run(self, node_config: Mapping, tags: Mapping[str, str], count: int) -> list[str]:
        """RunInstances in one batch, subnet after subnet while EC2 reports no capacity."""
        params = {k: v for k, v in node_config.items() if k not in ("SubnetIds", "SubnetId")}
        subnets = list(node_config.get("SubnetIds", [])) or \
            ([node_config["SubnetId"]] if node_config.get("SubnetId") else [None])
        name = f"cluster-launcher-{self.cluster_name}-{tags.get(T.TAG_NODE_KIND, 'node')}"
        specs = list(params.get("TagSpecifications", []))
        user = [t for s in specs if s.get("ResourceType") == "instance" for t in s.get("Tags", [])]
        params["TagSpecifications"] = [s for s in specs if s.get("ResourceType") != "instance"] + [{
            "ResourceType": "instance",
            "Tags": user + _tag_list({"Name": name, **tags})}]  # one entry per resource type
        failures = []
        what = f"node type {tags[T.TAG_NODE_TYPE]}: launching {count}" + \
            (f" x {params['InstanceType']}" if params.get("InstanceType") else "")
        machine = str(params.get("InstanceType") or tags[T.TAG_NODE_TYPE])
        for subnet in self.zone_backoff.order(machine, subnets):
            subnet_params = {**params, "SubnetId": subnet} if subnet else params
            try:
                result = self._call("run_instances", what, MinCount=count, MaxCount=count,
                                    **subnet_params)
            except CapacityError as exc:
                failures.append(f"{subnet}: {exc}")
                self.zone_backoff.failed(machine, subnet)
                continue
            self.zone_backoff.succeeded(machine, subnet)
            return [i["InstanceId"] for i in result["Instances"]]
        raise CapacityError(f"no capacity in any of {len(subnets)} subnet(s): "
                            f"{'; '.join(failures)}")

    def terminate(self, node_ids: Sequence[str]) -> None:
        """Terminate instances (unknown ids are ignored). With cache_stopped_nodes, on-demand
        workers are stopped instead while the cluster's head lives; once the head is gone (as in
        `cluster down`, which terminates the head first) the cache is useless, so the cluster's
        stopped instances are terminated too."""
        for node_id in node_ids:
            self._runners.close(node_id)
        every_state = ["pending", "running", "stopping", "stopped"]
        known = self._describe([{"Name": "instance-id", "Values": list(node_ids)}],
                               states=every_state) if node_ids else []
        stop, kill = [], []
        cache = self.cache_stopped and self._head_survives(node_ids)
        for instance in known:
            worker = instance["TagMap"].get(T.TAG_NODE_KIND) != T.KIND_HEAD
            keep = cache and worker and instance.get("InstanceLifecycle") != "spot"
            (stop if keep else kill).append(instance["InstanceId"])
        if self.cache_stopped and not cache:
            kill += [i["InstanceId"] for i in self._describe([], states=["stopping", "stopped"])
                     if i["InstanceId"] not in kill]
        for operation, ids in (("stop_instances", stop), ("terminate_instances", kill)):
            for start in range(0, len(ids), TERMINATE_CHUNK):
                self._call(operation, f"{operation.split('_')[0]}ping instances",
                           InstanceIds=ids[start:start + TERMINATE_CHUNK])
        with self._lock:
            for node_id in node_ids:
                self._instances.pop(node_id, None)

    def _head_survives(self, node_ids: Sequence[str]) -> bool:
        heads = self._describe([{"Name": f"tag:{T.TAG_NODE_KIND}", "Values": [T.KIND_HEAD]}])
        return any(h["InstanceId"] not in node_ids for h in heads)

    def set_tags(self, node_id: str, tags: Mapping[str, str]) -> None:
        self._call("create_tags", f"tagging {node_id}", Resources=[node_id], Tags=_tag_list(tags))
        with self._lock:
            if node_id in self._instances:
                self._instances[node_id]["TagMap"].update(tags)

    # --- reaching nodes ------------------------------------------------------------------------

    def command_runner(self, node_id: str):
        internal = self.use_internal_ips or "CLUSTER_NODE_ID" in os.environ
        host = self.internal_ip(node_id) if internal else \
            self._with_ip(node_id, "PublicIpAddress", attempts=30)  # assigned soon after launch
        if not host:
            raise ProviderError(f"{node_id} has no public IP; set provider.use_internal_ips: true "
                                "and run from inside the VPC, or use subnets that assign "
                                "public IPs")
        return self._runners.get(node_id, host, self._key_path(), f"{node_id} ({host})")

    def _key_path(self) -> str:
        """auth.ssh_private_key, else the region's key pair file bootstrap created."""
        from launcher.providers.aws_bootstrap import KEY_DIR

        name = self.provider_config.get("key_pair_name", f"cluster-launcher_{self.region}")
        return self.auth.get("ssh_private_key") or os.path.join(KEY_DIR, f"{name}.pem")


SPOT_INTERRUPTIONS = {"Server.SpotInstanceTermination", "Server.SpotInstanceShutdown"}


def _is_spot(node_config: Mapping) -> bool:
    return node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"


def _tag_list(tags: Mapping[str, str]) -> list[dict]:
    return [{"Key": k, "Value": str(v)} for k, v in tags.items()]
