"""Which hosts of an `ssh` cluster are in use, and their tags: a JSON file on the head, under a lock.

This module runs in two ways: imported, by the autoscaler on the head, and as a script that the
laptop sends over SSH to the head's own python3 (`python3 -c SOURCE OP_JSON`). So it uses the
standard library only and prints its answer as one JSON line.
"""

import fcntl
import json
import os
import sys


def apply(op: dict) -> dict:
    """Apply one operation under the lock and return {"nodes": {ip: {"tags": {...}}}, "claimed": [...]}.

    op: {"path": state file, "op": "read" | "claim" | "release" | "set_tags", ...}
      claim: "candidates" (ips, in order of preference), "count", "tags" — all or nothing
      release: "ips";  set_tags: "ip", "tags"
    """
    path = os.path.expanduser(op["path"])
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path) as f:
                nodes = json.load(f)
        except FileNotFoundError:
            nodes = {}
        claimed = []
        if op["op"] == "claim":
            free = [ip for ip in op["candidates"] if ip not in nodes]
            if len(free) >= op["count"]:
                claimed = free[:op["count"]]
                nodes.update({ip: {"tags": dict(op["tags"])} for ip in claimed})
        elif op["op"] == "release":
            for ip in op["ips"]:
                nodes.pop(ip, None)
        elif op["op"] == "set_tags" and op["ip"] in nodes:
            nodes[op["ip"]]["tags"].update(op["tags"])
        if op["op"] != "read":
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(nodes, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    return {"nodes": nodes, "claimed": claimed}


if __name__ == "__main__":
    print(json.dumps(apply(json.loads(sys.argv[1]))))
