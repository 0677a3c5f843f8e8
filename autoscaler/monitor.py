"""The autoscaler process on the head: `python -m autoscaler.monitor --config FILE --gcs-address A`.

Started by `cluster start --head --autoscaling-config FILE`. Runs the reconciler every
`autoscaler_update_interval_s`; one failed tick is logged and the next one tries again.
A restarted monitor resumes from the nodes' tags and the status its predecessor published.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

log = logging.getLogger("autoscaler")


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the cluster autoscaler.")
    parser.add_argument("--config", required=True)
    parser.add_argument("--gcs-address", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    from autoscaler.autoscaler import Autoscaler
    from launcher.config import load_config
    from launcher.providers import make_provider
    from runtime import rpc
    from runtime.generated import runtime_pb2_grpc as pb_grpc
    from runtime.session import read_token

    config = load_config(args.config)
    token = read_token()
    autoscaler = Autoscaler(
        config,
        make_provider(config.provider, config.cluster_name, config.auth),
        pb_grpc.GcsStub(rpc.make_channel(args.gcs_address, token)),
        head_ip=args.gcs_address.rsplit(":", 1)[0],
        token=token,
    )
    log.info(
        "autoscaler for cluster %s started (tick %.1fs)",
        config.cluster_name,
        config.autoscaler_update_interval_s,
    )
    while True:
        started = time.monotonic()
        try:
            autoscaler.tick()
        except Exception:  # the top of the loop: log and try again next tick
            log.exception("autoscaler tick failed")
        time.sleep(max(0.0, config.autoscaler_update_interval_s - (time.monotonic() - started)))


if __name__ == "__main__":
    main()
