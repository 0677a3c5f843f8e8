"""A fake Azure Resource Manager on 127.0.0.1: the subset of ARM the azure provider uses, spoken
over real HTTP to the real azure-mgmt SDK clients.

- Resources live in one dict keyed by lower-cased resource id: resource groups, virtual networks
  (subnets inside), network security groups, public IPs, NICs, VMs, managed disks, user-assigned
  identities, role assignments; tags are merged through `.../providers/Microsoft.Resources/tags/default`.
- Writes are long-running operations as ARM does them: PUT answers 201 and DELETE 202 with an
  `Azure-AsyncOperation` URL on this server, which answers InProgress once, then Succeeded or
  Failed (with an error code such as AllocationFailed).
- VM sizes (resource SKUs) with real vCPU/memory/GPU numbers, in eastus and westus2, zones 1-3.
- NICs get private IPs from their subnet's prefix (a 127.x prefix in the end-to-end test, so each
  VM's IP is a loopback address a container node can serve); public IPs come from 127.102.200.0/21.
- Tokens: the App Service managed identity endpoint `/msi/token` (IDENTITY_ENDPOINT, checked
  against IDENTITY_HEADER) issues bearer tokens every ARM call must carry; the IMDS path answers
  400 "no identity", as a VM without a managed identity does.
- Error injection: fail_vm(code, size, zone) makes VM creates fail, synchronously (409: capacity or
  quota) or asynchronously (the operation fails, the VM is left Failed); throttle(n) answers 429;
  evict(name) takes a spot VM away (deleted, or deallocated: its instanceView says so).
"""

from __future__ import annotations

import http.server
import ipaddress
import itertools
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import parse_qs, urlparse

SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
TENANT = "00000000-0000-0000-0000-0000000000aa"
LOCATIONS = {"eastus": ["1", "2", "3"], "westus2": ["1", "2", "3"]}
# name: (vCPUs, memory GB, GPUs)
SIZES = {
    "Standard_D2s_v5": (2, 8, 0), "Standard_D4s_v5": (4, 16, 0), "Standard_D8s_v5": (8, 32, 0),
    "Standard_D2s_v3": (2, 8, 0),  # Ray's default node types
    "Standard_NC4as_T4_v3": (4, 28, 1), "Standard_NC64as_T4_v3": (64, 440, 4),
    "Standard_NC6s_v3": (6, 112, 1), "Standard_NC24ads_A100_v4": (24, 220, 1),
    "Standard_NV36ads_A10_v5": (36, 440, 1), "Standard_ND96asr_v4": (96, 900, 8),
    "Standard_ND96isr_H100_v5": (96, 1900, 8),
}
PUBLIC_IPS = ipaddress.ip_network("127.102.200.0/21")
ASYNC_CODES = {"AllocationFailed", "ZonalAllocationFailed", "OverconstrainedAllocationRequest"}


@dataclass
class Failure:
    code: str
    size: Optional[str]
    zone: Optional[str]
    times: Optional[int]  # None: every time


@dataclass
class Operation:
    error: Optional[dict]
    finish: callable
    polls: int = 0


@dataclass
class FakeARM:
    subscription: str = SUBSCRIPTION
    identity_header: str = field(default_factory=lambda: secrets.token_hex(8))
    resources: dict = field(default_factory=dict)
    requests: list = field(default_factory=list)  # (method, path) of every ARM call
    restricted: dict = field(default_factory=dict)  # size -> reason it is not offered
    failures: list = field(default_factory=list)
    evicted: dict = field(default_factory=dict)  # lower-cased VM id -> its power state code
    throttled: int = 0
    tokens: set = field(default_factory=set)
    _operations: dict = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _server: Optional[http.server.ThreadingHTTPServer] = None

    # --- lifecycle and hooks for tests ---------------------------------------------------------

    def start(self) -> "FakeARM":
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True, name="fake-arm").start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def identity_endpoint(self) -> str:
        return f"{self.url}/msi/token"

    def fail_vm(self, code: str, size: Optional[str] = None, zone: Optional[str] = None,
                times: Optional[int] = 1) -> None:
        """VM creates of this size (any: None) in this zone fail with `code`, `times` times."""
        with self._lock:
            self.failures.append(Failure(code, size, zone, times))

    def evict(self, name: str, deallocate: bool = False) -> None:
        """Azure takes the spot VM `name` away: deletes it (evictionPolicy Delete) or
        deallocates it (Deallocate), as an eviction does."""
        with self._lock:
            [vm_id] = [i for i, r in self.resources.items() if r.get("name") == name
                       and r.get("type", "").lower() == "microsoft.compute/virtualmachines"]
            if deallocate:
                self.evicted[vm_id] = "PowerState/deallocated"
            else:
                del self.resources[vm_id]

    def throttle(self, times: int) -> None:
        """The next `times` ARM calls answer 429 Too Many Requests."""
        with self._lock:
            self.throttled = times

    def of_type(self, resource_type: str) -> list[dict]:
        """Every resource of a type, e.g. "Microsoft.Compute/virtualMachines"."""
        with self._lock:
            return [r for r in self.resources.values()
                    if r.get("type", "").lower() == resource_type.lower()]

    def vm_ips(self) -> dict:
        """VM name -> private IP, for VMs that are being created or run (the instance watcher)."""
        ips = {}
        with self._lock:
            for vm in self.of_type("Microsoft.Compute/virtualMachines"):
                if vm["properties"]["provisioningState"] in ("Creating", "Succeeded"):
                    nic = self.resources.get(_nic_id(vm).lower(), {})
                    config = nic.get("properties", {}).get("ipConfigurations", [{}])[0]
                    ips[vm["name"]] = config.get("properties", {}).get("privateIPAddress")
        return ips

    # --- request handling ----------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, headers, body: Optional[dict]):
        """(status, JSON body or None, extra headers)."""
        if path == "/msi/token":
            return self._token(query, headers)
        if path == "/metadata/identity/oauth2/token":
            return 400, {"error": "invalid_request",
                         "error_description": "Identity not found"}, {}
        auth = headers.get("Authorization", "")
        with self._lock:
            self.requests.append((method, path))
            if self.throttled:
                self.throttled -= 1
                return _error(429, "TooManyRequests", "throttled by the fake", {"Retry-After-Ms": "10"})
            if auth.removeprefix("Bearer ") not in self.tokens:
                return _error(401, "InvalidAuthenticationToken", "missing or unknown bearer token")
            parts = [p for p in path.split("/") if p]
            if len(parts) < 2 or parts[0].lower() != "subscriptions":
                return _error(404, "NotFound", f"no route {path}")
            if parts[1] != self.subscription:
                return _error(404, "SubscriptionNotFound",
                              f"The subscription '{parts[1]}' could not be found.")
            return self._route(method, parts, query, body)

    def _token(self, query, headers):
        if headers.get("X-IDENTITY-HEADER") != self.identity_header:
            return 401, {"error": "unauthorized", "error_description": "bad identity header"}, {}
        token = secrets.token_hex(16)
        with self._lock:
            self.tokens.add(token)
        return 200, {"access_token": token, "expires_on": str(int(time.time()) + 3600),
                     "resource": query.get("resource", [""])[0], "token_type": "Bearer"}, {}

    def _route(self, method, parts, query, body):
        lower = [p.lower() for p in parts]
        if lower[2:] == ["providers", "microsoft.compute", "skus"]:
            return 200, {"value": self._skus(query.get("$filter", [""])[0])}, {}
        if lower[2:4] == ["providers", "microsoft.fake"]:
            return self._poll(parts[-1])
        if len(lower) < 4 or lower[2] != "resourcegroups":
            return _error(404, "NotFound", "no route")
        group_id = "/".join([""] + parts[:4])
        if len(parts) == 4:
            return self._resource_group(method, group_id, parts[3], body)
        if group_id.lower() not in self.resources:
            return _error(404, "ResourceGroupNotFound",
                          f"Resource group '{parts[3]}' could not be found.")
        if lower[-4:] == ["providers", "microsoft.resources", "tags", "default"]:
            return self._tags(parts, body)
        if lower[4] != "providers" or len(parts) < 7:
            return _error(404, "NotFound", "no route")
        resource_id = "/".join([""] + parts)
        if len(parts) == 7:  # a collection
            kind = f"{parts[5]}/{parts[6]}".lower()
            return 200, {"value": [r for r in self.of_type(kind)
                                   if r["id"].lower().startswith(group_id.lower() + "/")]}, {}
        if len(parts) == 9 and lower[8] == "instanceview":  # a VM's power state
            if resource_id.lower().rsplit("/", 1)[0] not in self.resources:
                return _not_found(resource_id)
            power = self.evicted.get(resource_id.lower().rsplit("/", 1)[0], "PowerState/running")
            return 200, {"statuses": [{"code": "ProvisioningState/succeeded"},
                                      {"code": power}]}, {}
        if len(parts) == 9:  # a child resource (a vnet's subnet)
            found = self.resources.get("/".join([""] + parts[:8]).lower())
            subnets = (found or {}).get("properties", {}).get(parts[7], [])
            match = [s for s in subnets if s["name"].lower() == lower[8]]
            return (200, match[0], {}) if match else _not_found(resource_id)
        if method == "GET":
            found = self.resources.get(resource_id.lower())
            return (200, found, {}) if found else _not_found(resource_id)
        if method == "PUT":
            return self._put(resource_id, parts, body)
        if method == "DELETE":
            return self._delete(resource_id)
        return _error(405, "MethodNotAllowed", method)

    def _resource_group(self, method, group_id, name, body):
        found = self.resources.get(group_id.lower())
        if method in ("GET", "HEAD"):
            if found:
                return (200 if method == "GET" else 204), (found if method == "GET" else None), {}
            return _error(404, "ResourceGroupNotFound", f"Resource group '{name}' could not be found.")
        if method == "PUT":
            if body.get("location") not in LOCATIONS:
                return _error(400, "LocationNotAvailableForResourceGroup",
                              f"The provided location '{body.get('location')}' is not available")
            group = {**body, "id": group_id, "name": name, "type": "Microsoft.Resources/resourceGroups",
                     "properties": {"provisioningState": "Succeeded"}}
            self.resources[group_id.lower()] = group
            return (200 if found else 201), group, {}
        return _error(405, "MethodNotAllowed", method)

    def _tags(self, parts, body):
        scope = "/".join([""] + parts[:-4]).lower()
        found = self.resources.get(scope)
        if found is None:
            return _not_found(scope)
        tags = body.get("properties", {}).get("tags", {})
        if body.get("operation") == "Replace":
            found["tags"] = dict(tags)
        elif body.get("operation") == "Delete":
            found["tags"] = {k: v for k, v in found.get("tags", {}).items() if k not in tags}
        else:
            found["tags"] = {**found.get("tags", {}), **tags}
        return 200, {"id": "/".join([""] + parts), "properties": {"tags": found["tags"]}}, {}

    # --- PUT -----------------------------------------------------------------------------------

    def _put(self, resource_id, parts, body):
        kind = f"{parts[5]}/{parts[6]}"
        resource = {**body, "id": resource_id, "name": parts[7], "type": kind}
        properties = resource.setdefault("properties", {})
        properties["provisioningState"] = "Succeeded"
        make = {"virtualnetworks": self._vnet, "networkinterfaces": self._nic,
                "publicipaddresses": self._public_ip, "virtualmachines": self._vm,
                "userassignedidentities": self._identity}.get(parts[6].lower())
        problem = make(resource) if make else None
        if problem:
            return problem
        existed = resource_id.lower() in self.resources
        self.resources[resource_id.lower()] = resource
        if kind.lower() == "microsoft.authorization/roleassignments":
            return 201, resource, {}
        if kind.lower() == "microsoft.compute/virtualmachines":
            return self._vm_operation(resource)
        return self._operation(200 if existed else 201, resource, None, lambda: None)

    def _vnet(self, vnet):
        for subnet in vnet["properties"].get("subnets", []):
            subnet["id"] = f"{vnet['id']}/subnets/{subnet['name']}"
            subnet.setdefault("properties", {})["provisioningState"] = "Succeeded"

    def _nic(self, nic):
        for config in nic["properties"].get("ipConfigurations", []):
            props = config.setdefault("properties", {})
            config["id"] = f"{nic['id']}/ipConfigurations/{config['name']}"
            subnet = self._subnet(props.get("subnet", {}).get("id", ""))
            if subnet is None:
                return _error(400, "InvalidResourceReference", "the NIC's subnet does not exist")
            public = props.get("publicIPAddress")
            if public and public.get("id", "").lower() not in self.resources:
                return _error(400, "InvalidResourceReference", "the public IP does not exist")
            props["privateIPAddress"] = self._free_ip(
                ipaddress.ip_network(subnet["properties"]["addressPrefix"]), skip=4)
        return None

    def _subnet(self, subnet_id: str) -> Optional[dict]:
        vnet_id, _, name = subnet_id.lower().rpartition("/subnets/")
        vnet = self.resources.get(vnet_id, {})
        return next((s for s in vnet.get("properties", {}).get("subnets", [])
                     if s["name"].lower() == name), None)

    def _free_ip(self, network, skip: int) -> str:
        used = {c["properties"].get("privateIPAddress")
                for n in self.of_type("Microsoft.Network/networkInterfaces")
                for c in n["properties"].get("ipConfigurations", [])}
        used |= {p["properties"].get("ipAddress")
                 for p in self.of_type("Microsoft.Network/publicIPAddresses")}
        return next(str(ip) for ip in itertools.islice(network.hosts(), skip - 1, None)
                    if str(ip) not in used)

    def _public_ip(self, address):
        address["properties"]["ipAddress"] = self._free_ip(PUBLIC_IPS, skip=1)

    def _identity(self, identity):
        identity["properties"].update(principalId=str(uuid.uuid4()), clientId=str(uuid.uuid4()),
                                      tenantId=TENANT)

    def _vm(self, vm):
        props = vm["properties"]
        size = props["hardwareProfile"]["vmSize"]
        zone = (vm.get("zones") or [None])[0]
        if vm.get("location") not in LOCATIONS or size not in SIZES:
            return _error(400, "InvalidParameter",
                          f"The requested VM size {size} is not valid in location "
                          f"{vm.get('location')}.")
        if size in self.restricted:
            return _error(409, "SkuNotAvailable", f"The requested VM size {size} is currently "
                          f"not available in location '{vm['location']}'.")
        nic = self.resources.get(_nic_id(vm).lower())
        if nic is None:
            return _error(400, "InvalidResourceReference", "the VM's network interface does not exist")
        if nic["properties"].get("virtualMachine"):
            return _error(400, "NicInUse", "the network interface is attached to another VM")
        failure = self._injected(size, zone)
        if failure and failure not in ASYNC_CODES:
            message = (f"Operation could not be completed as it results in exceeding approved "
                       f"quota for {size}." if "Quota" in failure or failure == "OperationNotAllowed"
                       else f"Injected {failure} for {size} in zone {zone}.")
            return _error(409, failure, message)
        vm["_failure"] = failure
        props["vmId"] = str(uuid.uuid4())
        props["provisioningState"] = "Creating"
        nic["properties"]["virtualMachine"] = {"id": vm["id"]}
        os_disk = props["storageProfile"]["osDisk"]
        disk_id = f"{vm['id'].rsplit('/providers/', 1)[0]}/providers/Microsoft.Compute/disks/{os_disk['name']}"
        os_disk.setdefault("managedDisk", {})["id"] = disk_id
        self.resources[disk_id.lower()] = {
            "id": disk_id, "name": os_disk["name"], "type": "Microsoft.Compute/disks",
            "location": vm["location"], "managedBy": vm["id"],
            "properties": {"diskSizeGB": os_disk.get("diskSizeGB", 30),
                           "provisioningState": "Succeeded"}}
        return None

    def _injected(self, size, zone) -> Optional[str]:
        for failure in self.failures:
            if failure.size in (None, size) and failure.zone in (None, zone) and failure.times != 0:
                if failure.times is not None:
                    failure.times -= 1
                return failure.code
        return None

    def _vm_operation(self, vm):
        failure = vm.pop("_failure")
        error = {"code": failure, "message": f"Allocation failed for {vm['name']}: injected "
                 f"{failure}."} if failure else None

        def finish():
            vm["properties"]["provisioningState"] = "Failed" if failure else "Succeeded"
        return self._operation(201, vm, error, finish)

    # --- DELETE --------------------------------------------------------------------------------

    def _delete(self, resource_id):
        found = self.resources.get(resource_id.lower())
        if found is None:
            return 204, None, {}
        kind = found["type"].lower()
        if kind == "microsoft.network/networkinterfaces" and found["properties"].get("virtualMachine"):
            return _error(400, "NicInUse", f"Network interface {found['name']} is used by a VM.")
        if kind == "microsoft.network/publicipaddresses" and any(
                c["properties"].get("publicIPAddress", {}).get("id", "").lower() == resource_id.lower()
                for n in self.of_type("Microsoft.Network/networkInterfaces")
                for c in n["properties"].get("ipConfigurations", [])):
            return _error(400, "PublicIPAddressCannotBeDeleted",
                          f"Public IP address {found['name']} is in use by a network interface.")
        if kind == "microsoft.compute/disks" and found.get("managedBy"):
            return _error(409, "OperationNotAllowed", f"Disk {found['name']} is attached to a VM.")
        found["properties"]["provisioningState"] = "Deleting"

        def finish():
            self.resources.pop(resource_id.lower(), None)
            if kind == "microsoft.compute/virtualmachines":
                self._release(found)
        return self._operation(202, None, None, finish)

    def _release(self, vm):
        """What a deleted VM leaves: its disk and NICs, deleted when their deleteOption says so."""
        os_disk = vm["properties"]["storageProfile"]["osDisk"]
        disk = self.resources.get(os_disk["managedDisk"]["id"].lower())
        if disk is not None:
            if os_disk.get("deleteOption") == "Delete":
                self.resources.pop(disk["id"].lower())
            else:
                disk["managedBy"] = None
        for ref in vm["properties"]["networkProfile"]["networkInterfaces"]:
            nic = self.resources.get(ref["id"].lower())
            if nic is not None:
                if ref.get("properties", {}).get("deleteOption") == "Delete":
                    self.resources.pop(nic["id"].lower())
                else:
                    nic["properties"]["virtualMachine"] = None

    # --- long-running operations and catalog ---------------------------------------------------

    def _operation(self, status, body, error, finish):
        operation_id = uuid.uuid4().hex
        self._operations[operation_id] = Operation(error, finish)
        url = (f"{self.url}/subscriptions/{self.subscription}/providers/Microsoft.Fake/"
               f"operations/{operation_id}?api-version=2024-01-01")
        headers = {"Azure-AsyncOperation": url, "Retry-After-Ms": "10"}
        if status == 202:
            headers["Location"] = url
        return status, body, headers

    def _poll(self, operation_id):
        operation = self._operations.get(operation_id)
        if operation is None:
            return _error(404, "NotFound", "no such operation")
        operation.polls += 1
        if operation.polls == 1:
            return 200, {"status": "InProgress"}, {"Retry-After-Ms": "10"}
        if operation.polls == 2:
            operation.finish()
        if operation.error:
            return 200, {"status": "Failed", "error": operation.error}, {}
        return 200, {"status": "Succeeded"}, {}

    def _skus(self, filter_text: str) -> list:
        location = filter_text.split("'")[1] if "'" in filter_text else None
        if location not in LOCATIONS:
            return []
        skus = []
        for name, (cpus, memory, gpus) in SIZES.items():
            capabilities = [{"name": "vCPUs", "value": str(cpus)},
                            {"name": "MemoryGB", "value": str(memory)}]
            if gpus:
                capabilities.append({"name": "GPUs", "value": str(gpus)})
            restrictions = [{"type": "Location", "values": [location],
                             "restrictionInfo": {"locations": [location]},
                             "reasonCode": self.restricted[name]}] if name in self.restricted else []
            skus.append({"resourceType": "virtualMachines", "name": name, "tier": "Standard",
                         "locations": [location], "capabilities": capabilities,
                         "locationInfo": [{"location": location, "zones": LOCATIONS[location]}],
                         "restrictions": restrictions})
        return skus


def _nic_id(vm: dict) -> str:
    return vm["properties"]["networkProfile"]["networkInterfaces"][0]["id"]


def _error(status, code, message, headers=None):
    return status, {"error": {"code": code, "message": message}}, headers or {}


def _not_found(resource_id):
    return _error(404, "ResourceNotFound", f"The Resource '{resource_id}' was not found.")


class _Handler(http.server.BaseHTTPRequestHandler):
    fake: FakeARM
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else ~40 ms of delayed ACK per call

    def _serve(self):
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else {}
        status, payload, headers = self.fake.handle(self.command, url.path, parse_qs(url.query),
                                                    self.headers, body)
        data = json.dumps(payload).encode() if payload is not None else b""
        self.send_response(status)
        for key, value in {**headers, "Content-Type": "application/json"}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_DELETE = do_PATCH = do_POST = do_HEAD = _serve

    def log_message(self, *args):  # quiet
        pass
