"""A fake Compute Engine v1 REST server on 127.0.0.1: the subset the gcp provider uses.

The real google-cloud-compute clients talk to it over HTTP (ClientOptions.api_endpoint), and
google-auth gets its credentials from it: a service-account key file that signs its own tokens
(JWTs, accepted when its service account signed them) and the GCE metadata server
(GCE_METADATA_HOST), so the whole credential chain runs. Calls without such a token get 401.

Served: regions get, zones list, machineTypes and acceleratorTypes get/list (a small catalog with
real shapes: g2 = L4, a2 = A100, a3 = H100), images get/getFromFamily, networks and subnetworks get,
firewalls get/insert, instances insert/get/list/aggregatedList (filter on labels, name, status)/
delete/setLabels (with labelFingerprint)/start/stop, zone and global operations get/wait.
Instance inserts are checked as Compute Engine does (machine and GPU type offered in the zone,
image exists, label syntax, unique name). Instance IPs: internal 127.101.0.0/17, external
127.101.128.0/17, so a test can boot a container node on each instance's internal IP.

    fake = FakeGCE(); url = fake.start()   ...   fake.stop()
    fake.inject("ZONE_RESOURCE_POOL_EXHAUSTED", zones={"us-central1-a"})   # operation error
    fake.inject("quotaExceeded", status=403)                               # HTTP error
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import parse_qs, urlparse

PROJECT = "test-project"
# The identity of the tests' credentials (a key file, the metadata server). Neither a
# *.gserviceaccount.com address nor the googleapis.com universe: google-auth then skips its
# Regional Access Boundary lookup, which would ask the public iamcredentials.googleapis.com.
SERVICE_ACCOUNT = "head@launcher-tests.internal"
UNIVERSE = "launcher-tests.internal"
LINK = "https://www.googleapis.com/compute/v1/projects"  # self links name the real API, as GCE does
ZONES = {"us-central1": ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"],
         "europe-west4": ["europe-west4-a", "europe-west4-b", "europe-west4-c"],
         "us-west1": ["us-west1-a", "us-west1-b", "us-west1-c"]}  # Ray's examples' region
# name -> (vCPUs, memory MB, built-in GPUs)
MACHINE_TYPES = {
    "e2-standard-2": (2, 8192, None), "n2-standard-2": (2, 8192, None),
    "n1-standard-2": (2, 7680, None),  # Ray's default node types
    "n2-standard-4": (4, 16384, None), "n2-standard-8": (8, 32768, None),
    "n1-standard-4": (4, 15360, None), "n1-standard-8": (8, 30720, None),
    "n1-standard-16": (16, 61440, None),
    "g2-standard-8": (8, 32768, ("nvidia-l4", 1)), "g2-standard-24": (24, 98304, ("nvidia-l4", 2)),
    "a2-highgpu-1g": (12, 87040, ("nvidia-tesla-a100", 1)),
    "a2-ultragpu-1g": (12, 174080, ("nvidia-a100-80gb", 1)),
    "a3-highgpu-8g": (208, 1916928, ("nvidia-h100-80gb", 8)),
}
# accelerator type -> zones offering it (machine types with built-in GPUs follow their GPU)
ACCELERATORS = {
    "nvidia-tesla-t4": {"us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f",
                        "europe-west4-a", "europe-west4-b", "europe-west4-c"},
    "nvidia-l4": {"us-central1-a", "us-central1-b", "us-central1-c", "europe-west4-a"},
    "nvidia-tesla-a100": {"us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"},
    "nvidia-a100-80gb": {"us-central1-a", "us-central1-c"},
    "nvidia-h100-80gb": {"us-central1-a", "us-central1-c"},
}
IMAGE_FAMILIES = {("deeplearning-platform-release", "common-cu128-ubuntu-2204-nvidia-570"),
                  ("debian-cloud", "debian-12"), ("ubuntu-os-cloud", "ubuntu-2204-lts")}
IMAGES = {("debian-cloud", "debian-12-bookworm-v20250101"),
          ("deeplearning-platform-release", "common-cpu-v20240922")}  # Ray's gcp-example-full
NETWORKS = {"default"}
SUBNETWORKS = {("us-central1", "default"), ("europe-west4", "default"), ("us-west1", "default")}
LABEL = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
CLAUSE = re.compile(r'\(\s*([\w.-]+)\s*(=|!=)\s*"([^"]*)"\s*\)')


class HTTPError(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclass
class Injection:
    code: str
    zones: Optional[set]
    times: Optional[int]  # None: every insert
    status: Optional[int]  # an HTTP status: the insert call fails; None: its operation does


def _gpu_zones(machine: str) -> set:
    gpus = MACHINE_TYPES[machine][2]
    return ACCELERATORS[gpus[0]] if gpus else {z for zones in ZONES.values() for z in zones}


class FakeGCE:
    def __init__(self, project: str = PROJECT):
        self.project = project
        self.instances: dict[str, dict] = {}  # name -> Instance resource
        self.operations: dict[str, dict] = {}
        self.firewalls: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []  # (method, path below the project), in order
        self.injections: list[Injection] = []
        self._tokens: set[str] = set()
        self._next_ip = 0
        self._lock = threading.RLock()
        self._server: Optional[ThreadingHTTPServer] = None

    # --- test controls -------------------------------------------------------------------------

    def start(self) -> str:
        fake = self

        class Handler(_Handler):
            state = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True,
                         name="fake-gce").start()
        return self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def inject(self, code: str, zones=None, times: Optional[int] = None,
               status: Optional[int] = None) -> None:
        """Inserts in `zones` (all when None) fail with `code`: as their operation's error, or
        with HTTP `status` and reason `code`; `times` inserts, or all."""
        with self._lock:
            self.injections.append(Injection(code, set(zones) if zones else None, times, status))

    def live_ips(self) -> dict[str, Optional[str]]:
        """Instance name -> internal IP of every instance that is not stopped."""
        with self._lock:
            return {name: i["networkInterfaces"][0]["networkIP"]
                    for name, i in self.instances.items()
                    if i["status"] in ("PROVISIONING", "STAGING", "RUNNING")}

    def service_account_info(self) -> dict:
        """A service-account key file, minus its private key: token_uri is this server, and
        the universe is not googleapis.com (see SERVICE_ACCOUNT)."""
        return {"type": "service_account", "project_id": self.project, "private_key_id": "1",
                "client_email": SERVICE_ACCOUNT, "client_id": "1",
                "token_uri": f"{self.url}/token", "universe_domain": UNIVERSE}

    # --- requests ------------------------------------------------------------------------------

    def issue_token(self) -> dict:
        token = "fake-" + secrets.token_hex(16)
        with self._lock:
            self._tokens.add(token)
        return {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    def authorized(self, header: str) -> bool:
        """A token this server issued, or a JWT its service account signed itself (what
        service-account credentials send outside the googleapis.com universe)."""
        token = header.removeprefix("Bearer ").strip()
        with self._lock:
            if token in self._tokens:
                return True
        parts = token.split(".")
        try:
            claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        except (IndexError, ValueError):
            return False
        return claims.get("iss") == SERVICE_ACCOUNT

    def handle(self, method: str, path: str, query: dict, body: dict):
        """(status, JSON) for one Compute API request below /compute/v1/projects/."""
        project, _, rest = path.partition("/")
        if project not in {self.project} | {p for p, _ in IMAGE_FAMILIES | IMAGES}:
            raise _not_found(f"projects/{project}")
        with self._lock:
            self.calls.append((method, rest))
            for pattern, verb, handler in ROUTES:
                match = re.fullmatch(pattern, rest)
                if match and verb == method:
                    return handler(self, project, query, body, *match.groups())
        raise HTTPError(404, "notFound", f"The resource '{path}' was not found")

    # --- catalog -------------------------------------------------------------------------------

    def _region(self, project, query, body, region):
        if region not in ZONES:
            raise _not_found(f"projects/{project}/regions/{region}")
        return {"kind": "compute#region", "name": region, "status": "UP",
                "selfLink": f"{LINK}/{project}/regions/{region}",
                "zones": [f"{LINK}/{project}/zones/{z}" for z in ZONES[region]]}

    def _zones(self, project, query, body):
        return {"kind": "compute#zoneList", "items": [
            {"name": z, "status": "UP", "region": f"{LINK}/{project}/regions/{r}"}
            for r, zones in ZONES.items() for z in zones]}

    def _machine(self, project, zone, name):
        if name not in MACHINE_TYPES or zone not in _gpu_zones(name):
            raise _not_found(f"projects/{project}/zones/{zone}/machineTypes/{name}")
        cpus, memory, gpus = MACHINE_TYPES[name]
        machine = {"kind": "compute#machineType", "name": name, "guestCpus": cpus,
                   "memoryMb": memory, "zone": zone,
                   "selfLink": f"{LINK}/{project}/zones/{zone}/machineTypes/{name}"}
        if gpus:
            machine["accelerators"] = [{"guestAcceleratorType": gpus[0],
                                        "guestAcceleratorCount": gpus[1]}]
        return machine

    def _machine_get(self, project, query, body, zone, name):
        return self._machine(project, zone, name)

    def _machine_list(self, project, query, body, zone):
        return {"kind": "compute#machineTypeList", "items": [
            self._machine(project, zone, n) for n in MACHINE_TYPES if zone in _gpu_zones(n)]}

    def _accelerator(self, project, zone, name):
        if zone not in ACCELERATORS.get(name, ()):
            raise _not_found(f"projects/{project}/zones/{zone}/acceleratorTypes/{name}")
        return {"kind": "compute#acceleratorType", "name": name, "zone": zone,
                "maximumCardsPerInstance": 8,
                "selfLink": f"{LINK}/{project}/zones/{zone}/acceleratorTypes/{name}"}

    def _accelerator_get(self, project, query, body, zone, name):
        return self._accelerator(project, zone, name)

    def _accelerator_list(self, project, query, body, zone):
        return {"kind": "compute#acceleratorTypeList", "items": [
            self._accelerator(project, zone, n) for n, zones in ACCELERATORS.items()
            if zone in zones]}

    def _image(self, project, query, body, name):
        if (project, name) not in IMAGES:
            raise _not_found(f"projects/{project}/global/images/{name}")
        return {"kind": "compute#image", "name": name, "status": "READY"}

    def _image_family(self, project, query, body, family):
        if (project, family) not in IMAGE_FAMILIES:
            raise _not_found(f"projects/{project}/global/images/family/{family}")
        return {"kind": "compute#image", "name": f"{family}-v20250101", "family": family,
                "status": "READY"}

    def _network(self, project, query, body, name):
        if name not in NETWORKS:
            raise _not_found(f"projects/{project}/global/networks/{name}")
        return {"kind": "compute#network", "name": name,
                "selfLink": f"{LINK}/{project}/global/networks/{name}"}

    def _subnetwork(self, project, query, body, region, name):
        if (region, name) not in SUBNETWORKS:
            raise _not_found(f"projects/{project}/regions/{region}/subnetworks/{name}")
        return {"kind": "compute#subnetwork", "name": name, "region": region}

    def _firewall_get(self, project, query, body, name):
        if name not in self.firewalls:
            raise _not_found(f"projects/{project}/global/firewalls/{name}")
        return self.firewalls[name]

    def _firewall_insert(self, project, query, body):
        if body.get("name") in self.firewalls:
            raise HTTPError(409, "alreadyExists", f"The resource '{body['name']}' already exists")
        self.firewalls[body["name"]] = {**body, "kind": "compute#firewall"}
        return _public(self._operation(project, None, "insert", body["name"], done=True))

    # --- instances -----------------------------------------------------------------------------

    def _insert(self, project, query, body, zone):
        self._check_instance(project, zone, body)
        injected = self._injected(zone)
        if injected and injected.status:
            raise HTTPError(injected.status, injected.code, f"Injected {injected.code} in {zone}")
        operation = self._operation(project, zone, "insert", body["name"])
        if injected:
            operation["pending_error"] = {"code": injected.code, "message": (
                f"The zone 'projects/{project}/zones/{zone}' does not have enough resources "
                "available to fulfill the request." if "EXHAUSTED" in injected.code
                else f"Injected {injected.code} in {zone}")}
            return _public(operation)
        self._next_ip += 1
        n = self._next_ip
        interfaces = [dict(i) for i in body.get("networkInterfaces", [{}])]
        interfaces[0]["networkIP"] = f"127.101.{n // 254}.{n % 254 + 1}"
        for config in interfaces[0].get("accessConfigs", []):
            config["natIP"] = f"127.101.{128 + n // 254}.{n % 254 + 1}"
        self.instances[body["name"]] = {
            **body, "kind": "compute#instance", "id": str(1000 + n), "status": "PROVISIONING",
            "zone": f"{LINK}/{project}/zones/{zone}", "networkInterfaces": interfaces,
            "machineType": f"{LINK}/{project}/{body['machineType']}",
            "labelFingerprint": secrets.token_hex(8),
            "selfLink": f"{LINK}/{project}/zones/{zone}/instances/{body['name']}"}
        operation["on_done"] = ("RUNNING", body["name"])
        return _public(operation)

    def _check_instance(self, project, zone, body) -> None:
        """What Compute Engine refuses before it creates anything."""
        name = body.get("name", "")
        if not NAME.fullmatch(name):
            raise _invalid("resource.name", name)
        if name in self.instances:
            raise HTTPError(409, "alreadyExists",
                            f"The resource 'projects/{project}/zones/{zone}/instances/{name}' "
                            "already exists")
        machine = re.fullmatch(rf"zones/{zone}/machineTypes/([\w-]+)", body.get("machineType", ""))
        if not machine or machine.group(1) not in MACHINE_TYPES \
                or zone not in _gpu_zones(machine.group(1)):
            raise _invalid("resource.machineType", body.get("machineType"))
        for gpu in body.get("guestAccelerators", []):
            kind = gpu.get("acceleratorType", "").rsplit("/", 1)[-1]
            if f"zones/{zone}/acceleratorTypes/" not in gpu.get("acceleratorType", "") \
                    or zone not in ACCELERATORS.get(kind, ()):
                raise _invalid("resource.guestAccelerators[0].acceleratorType",
                               gpu.get("acceleratorType"))
        for key, value in body.get("labels", {}).items():
            if not LABEL.fullmatch(key) or not LABEL_VALUE.fullmatch(value):
                raise _invalid("resource.labels", f"{key}={value}")
        for disk in body.get("disks", []):
            image = disk.get("initializeParams", {}).get("sourceImage", "")
            found = re.fullmatch(r"projects/([^/]+)/global/images/(family/)?([^/]+)", image)
            known = IMAGE_FAMILIES if found and found.group(2) else IMAGES
            if image and not (found and (found.group(1), found.group(3)) in known):
                raise _not_found(image)

    def _injected(self, zone) -> Optional[Injection]:
        for injection in self.injections:
            if injection.zones is None or zone in injection.zones:
                if injection.times is not None:
                    injection.times -= 1
                    if injection.times == 0:
                        self.injections.remove(injection)
                return injection
        return None

    def _instance(self, project, zone, name) -> dict:
        instance = self.instances.get(name)
        if instance is None or not instance["zone"].endswith(f"/zones/{zone}"):
            raise _not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        return instance

    def _get(self, project, query, body, zone, name):
        return self._instance(project, zone, name)

    def _list(self, project, query, body, zone):
        return {"kind": "compute#instanceList", "items": [
            i for i in self._matching(query) if i["zone"].endswith(f"/zones/{zone}")]}

    def _aggregated(self, project, query, body):
        items: dict[str, dict] = {}
        for instance in self._matching(query):
            zone = instance["zone"].rsplit("/", 1)[-1]
            items.setdefault(f"zones/{zone}", {"instances": []})["instances"].append(instance)
        return {"kind": "compute#instanceAggregatedList", "items": items}

    def _matching(self, query) -> list[dict]:
        """Instances matching `filter`: parenthesised `field = "value"` clauses, all of them."""
        text = query.get("filter", [""])[0]
        clauses = CLAUSE.findall(text)
        if CLAUSE.sub("", text).strip():
            raise HTTPError(400, "invalid", f"Invalid list filter expression '{text}'.")

        def value(instance, field):
            if field.startswith("labels."):
                return instance.get("labels", {}).get(field[len("labels."):], "")
            return str(instance.get(field, ""))

        return [i for i in self.instances.values()
                if all((value(i, f) == v) == (op == "=") for f, op, v in clauses)]

    def _delete(self, project, query, body, zone, name):
        self._instance(project, zone, name)["status"] = "STOPPING"
        operation = self._operation(project, zone, "delete", name)
        operation["on_done"] = (None, name)
        return _public(operation)

    def _stop(self, project, query, body, zone, name):
        self._instance(project, zone, name)["status"] = "STOPPING"
        operation = self._operation(project, zone, "stop", name)
        operation["on_done"] = ("TERMINATED", name)
        return _public(operation)

    def _start(self, project, query, body, zone, name):
        self._instance(project, zone, name)["status"] = "STAGING"
        operation = self._operation(project, zone, "start", name)
        operation["on_done"] = ("RUNNING", name)
        return _public(operation)

    def _set_labels(self, project, query, body, zone, name):
        instance = self._instance(project, zone, name)
        if body.get("labelFingerprint") != instance["labelFingerprint"]:
            raise HTTPError(412, "conditionNotMet", "Labels fingerprint either invalid or "
                            "resource labels have changed")
        for key, value in body.get("labels", {}).items():
            if not LABEL.fullmatch(key) or not LABEL_VALUE.fullmatch(value):
                raise _invalid("labels", f"{key}={value}")
        instance["labels"] = dict(body.get("labels", {}))
        instance["labelFingerprint"] = secrets.token_hex(8)
        return _public(self._operation(project, zone, "setLabels", name, done=True))

    # --- operations ----------------------------------------------------------------------------

    def _operation(self, project, zone, kind, target, done=False) -> dict:
        name = f"operation-{secrets.token_hex(8)}"
        operation = {"kind": "compute#operation", "id": str(len(self.operations) + 1),
                     "name": name, "operationType": kind, "status": "RUNNING",
                     "targetLink": target, "progress": 0,
                     "selfLink": f"{LINK}/{project}/operations/{name}"}
        if zone:
            operation["zone"] = f"{LINK}/{project}/zones/{zone}"
        self.operations[name] = operation
        if done:
            self._finish(operation)
        return operation

    def _finish(self, operation) -> None:
        """An operation completes when a client first looks at it again."""
        if operation["status"] == "DONE":
            return
        operation.update(status="DONE", progress=100)
        if "pending_error" in operation:
            operation["error"] = {"errors": [operation.pop("pending_error")]}
        status, name = operation.pop("on_done", (None, None))
        if name in self.instances and status:
            self.instances[name]["status"] = status
        elif name in self.instances and operation["operationType"] == "delete":
            del self.instances[name]

    def _operation_get(self, project, query, body, *scope_and_name):
        operation = self.operations.get(scope_and_name[-1])
        if operation is None:
            raise _not_found(f"projects/{project}/operations/{scope_and_name[-1]}")
        self._finish(operation)
        return _public(operation)


def _public(operation: dict) -> dict:
    return {k: v for k, v in operation.items() if k not in ("pending_error", "on_done")}


def _not_found(resource: str) -> HTTPError:
    return HTTPError(404, "notFound", f"The resource '{resource}' was not found")


def _invalid(field: str, value) -> HTTPError:
    return HTTPError(400, "invalid", f"Invalid value for field '{field}': '{value}'.")


Z = r"zones/([\w-]+)"
ROUTES = [
    (r"regions/([\w-]+)", "GET", FakeGCE._region),
    (r"zones", "GET", FakeGCE._zones),
    (rf"{Z}/machineTypes/([\w-]+)", "GET", FakeGCE._machine_get),
    (rf"{Z}/machineTypes", "GET", FakeGCE._machine_list),
    (rf"{Z}/acceleratorTypes/([\w-]+)", "GET", FakeGCE._accelerator_get),
    (rf"{Z}/acceleratorTypes", "GET", FakeGCE._accelerator_list),
    (r"global/images/family/([\w-]+)", "GET", FakeGCE._image_family),
    (r"global/images/([\w-]+)", "GET", FakeGCE._image),
    (r"global/networks/([\w-]+)", "GET", FakeGCE._network),
    (r"regions/([\w-]+)/subnetworks/([\w-]+)", "GET", FakeGCE._subnetwork),
    (r"global/firewalls/([\w-]+)", "GET", FakeGCE._firewall_get),
    (r"global/firewalls", "POST", FakeGCE._firewall_insert),
    (rf"{Z}/instances", "POST", FakeGCE._insert),
    (rf"{Z}/instances", "GET", FakeGCE._list),
    (r"aggregated/instances", "GET", FakeGCE._aggregated),
    (rf"{Z}/instances/([\w-]+)", "GET", FakeGCE._get),
    (rf"{Z}/instances/([\w-]+)", "DELETE", FakeGCE._delete),
    (rf"{Z}/instances/([\w-]+)/setLabels", "POST", FakeGCE._set_labels),
    (rf"{Z}/instances/([\w-]+)/start", "POST", FakeGCE._start),
    (rf"{Z}/instances/([\w-]+)/stop", "POST", FakeGCE._stop),
    (rf"{Z}/operations/([\w-]+)", "GET", FakeGCE._operation_get),
    (rf"{Z}/operations/([\w-]+)/wait", "POST", FakeGCE._operation_get),
    (r"global/operations/([\w-]+)", "GET", FakeGCE._operation_get),
    (r"global/operations/([\w-]+)/wait", "POST", FakeGCE._operation_get),
]

METADATA = "/computeMetadata/v1/"


class _Handler(BaseHTTPRequestHandler):
    state: FakeGCE
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each small response waits ~40 ms for an ACK

    def log_message(self, *args) -> None:
        pass

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def do_DELETE(self):
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            if url.path == "/token" and method == "POST":
                return self._reply(200, self.state.issue_token())
            if url.path == "/" or url.path.startswith(METADATA):
                return self._metadata(url.path)
            if not url.path.startswith("/compute/v1/projects/"):
                raise HTTPError(404, "notFound", f"no such path {url.path}")
            if not self.state.authorized(self.headers.get("Authorization", "")):
                raise HTTPError(401, "authError", "Request had invalid authentication "
                                "credentials. Expected OAuth 2 access token.")
            body = json.loads(raw) if raw else {}
            self._reply(200, self.state.handle(method, url.path[len("/compute/v1/projects/"):],
                                               parse_qs(url.query), body))
        except HTTPError as exc:
            self._reply(exc.status, {"error": {"code": exc.status, "message": exc.message,
                                               "errors": [{"message": exc.message,
                                                           "domain": "global",
                                                           "reason": exc.reason}]}})

    def _metadata(self, path: str) -> None:
        """The GCE metadata server: what google-auth asks on a VM with a service account."""
        if self.headers.get("Metadata-Flavor") != "Google":
            raise HTTPError(403, "forbidden", "Missing Metadata-Flavor:Google header.")
        key = path[len(METADATA):]
        answers = {
            "": "", "project/project-id": self.state.project, "universe/universe-domain": UNIVERSE,
            "instance/service-accounts/default/": {"email": SERVICE_ACCOUNT, "aliases": ["default"],
                                                   "scopes": ["https://www.googleapis.com/auth/"
                                                              "cloud-platform"]},
            "instance/service-accounts/default/token": None,
        }
        if path != "/" and key not in answers:
            raise HTTPError(404, "notFound", f"no metadata {key}")
        answer = self.state.issue_token() if key.endswith("/token") else answers.get(key, "")
        self._reply(200, answer, {"Metadata-Flavor": "Google"})

    def _reply(self, status: int, payload, headers=None) -> None:
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if isinstance(payload, str)
                         else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
