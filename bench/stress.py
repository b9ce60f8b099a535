"""The local cloud under duplicates, poison, a request limit, a storage outage and killed function servers:
does every model arrive exactly once, and nothing else?

    python bench/stress.py [--users 20] [--outage 15]

`iml dev-stack` with a per-user limit of 2 and 30 s claim leases. Every signup of `--users` users is published
two or three times at once; four more users ask for three models each (one too many); five kinds of poison go
in (a key off the curve, bytes that are not JSON, a missing field, a number past a double's range, a
signup reusing another's request id with another key). Meanwhile storage is down for `--outage` seconds and
the generate and watermark servers are killed mid-request and restarted. The table says what came out.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from functions.events import Signup  # noqa: E402
from iml import devstack  # noqa: E402
from iml.device import public_key_b64  # noqa: E402


def signup(user_id: str, request_id: str = "req-1") -> Signup:
    return Signup(request_id=request_id, user_id=user_id,
                  device_public_key=public_key_b64(ec.generate_private_key(ec.SECP256R1())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--outage", type=float, default=15.0)
    args = parser.parse_args()
    say = lambda line: print(line, file=sys.stderr)  # noqa: E731

    with tempfile.TemporaryDirectory(prefix="iml-stress-") as tmp:
        folder = Path(tmp)
        stack = devstack.up(folder, "iml-stress", say=say, env_overrides={
            "IML_USER_MODEL_LIMIT": "2", "IML_CLAIM_LEASE_SECONDS": "30", "IML_CLAIM_WAIT_SECONDS": "5"})
        os.environ.update(stack.env())  # once for every thread: the clients find the emulators there
        try:
            topic = stack.settings().topics.signup
            expected = [signup(f"user-{i:02d}") for i in range(args.users)]
            greedy = [signup(f"greedy-{i}", f"req-{n}") for i in range(4) for n in range(3)]
            conflicting = signup(expected[0].user_id, expected[0].request_id)
            poison = [json.dumps(signup("poison-key").to_dict() | {"device_public_key": base64.b64encode(
                          b"\x04" + b"\x01" * 64).decode()}).encode(),
                      b"{not json",
                      json.dumps({k: v for k, v in signup("poison-field").to_dict().items() if k != "user_id"}).encode(),
                      json.dumps(signup("poison-number").to_dict()).encode()[:-1] + b', "big": 1e999}',
                      json.dumps(conflicting.to_dict()).encode()]
            started = time.perf_counter()
            copies = [s for s in expected for _ in range(2 + s.user_id.endswith(("0", "5")))]
            sends = [threading.Thread(target=devstack.publish, args=(stack, topic, s.to_dict())) for s in copies]
            for thread in sends:
                thread.start()
            for thread in sends:
                thread.join()
            for s in greedy:
                devstack.publish(stack, topic, s.to_dict())
                time.sleep(0.5)  # in order, so that the third of each is the one refused
            for data in poison:
                devstack.publish_raw(stack, topic, data)
            devstack.restart(folder, "storage", down_for=args.outage, say=say)
            devstack.restart(folder, "generate", say=say)
            time.sleep(20)
            devstack.restart(folder, "watermark", say=say)

            admitted = {s.model_id for s in expected} | {s.model_id for s in greedy if not s.request_id.endswith("2")}
            ready, dead = [], []
            deadline = time.monotonic() + 1200
            while not admitted <= {r["model_id"] for r in ready} or len(dead) < 9:
                if time.monotonic() > deadline:
                    break
                ready += devstack.pull(stack, stack.settings().topics.ready, timeout=2)
                dead += devstack.pull(stack, stack.settings().topics.dead_letter, timeout=2)
            wall = time.perf_counter() - started
            time.sleep(10)  # late copies
            ready += devstack.pull(stack, stack.settings().topics.ready, timeout=2)
            dead += devstack.pull(stack, stack.settings().topics.dead_letter, timeout=2)
            client = devstack.storage_client(stack)
            issued = [b.name for b in client.list_blobs(f"{stack.project}-evidence") if b.name.endswith("/issued.json")]
            delivered = [b.name for b in client.list_blobs(f"{stack.project}-delivery")]
            staging = [b.name for b in client.list_blobs(f"{stack.project}-staging")]
        finally:
            devstack.down(folder, say=lambda line: None)

    per_model = Counter(r["model_id"] for r in ready)
    table = Table(title=f"Stress: {len(copies)} copies of {args.users} signups, {len(greedy)} greedy, "
                        f"{len(poison)} poison, storage down {args.outage:g} s, two servers killed")
    for column in ("what", "expected", "got"):
        table.add_column(column, justify="left" if column == "what" else "right")
    table.add_row("models announced", str(len(admitted)), str(len(per_model)))
    table.add_row("announced more than once (same notification_id)", "0",
                  str(sum(1 for n in per_model.values() if n > 1)))
    table.add_row("announced but not admitted", "0", str(len(set(per_model) - admitted)))
    table.add_row("ledger records issued", str(len(admitted)), str(len(issued)))
    table.add_row("delivered objects", str(len(admitted)), str(len(delivered)))
    table.add_row("staging objects left", "0", str(len(staging)))
    kinds = Counter(d.get("error_type") for d in dead)
    for kind, count in (("RequestLimitExceeded", 4), ("InvalidDeviceKey", 1), ("InvalidEvent", 3),
                        ("DuplicateRequest", 1)):
        table.add_row(f"dead letters: {kind}", str(count), str(kinds.pop(kind, 0)))
    table.add_row("dead letters: anything else", "0", str(sum(kinds.values())))
    table.add_row("wall time to the last model", "-", f"{wall:.0f} s")
    Console().print(table)


if __name__ == "__main__":
    main()
