"""Sealing and opening throughput and peak memory, against raw AES-256-GCM on the same bytes in the same run.

    python bench/seal.py [--sizes 1,16,64,256] [--chunk-kib 1024] [--repeats 3]

For each model size (MiB): raw AES-256-GCM, one shot over the bytes in memory (the physical reference);
seal file to file with the digest known (the pipeline's case: the watermark step computed it); seal with the
digest computed first (two passes); in memory, as the pipeline's encrypt step does; open file to file,
with the chunks' tags only and with the digest checked too. Best of --repeats runs.
Peak memory is what Python allocated at most during the operation (tracemalloc: the chunks, the buffers);
for the file-to-file rows it must not grow with the model's size. Files live in /dev/shm where it exists,
so the rows compare the sealing, not the disk.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from infra.envelope import open_sealed, seal, seal_bytes  # noqa: E402


def measure(operation, repeats: int) -> tuple[float, int]:
    """Best wall time of `repeats` runs, and the highest traced allocation over them."""
    best, peak = float("inf"), 0
    for _ in range(repeats):
        tracemalloc.start()
        started = time.perf_counter()
        operation()
        best = min(best, time.perf_counter() - started)
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return best, peak


def raw_chunked(aead: AESGCM, data: bytes, chunk: int) -> None:
    view, out = memoryview(data), memoryview(bytearray(chunk + 16))
    for start in range(0, len(data), chunk):
        piece = view[start:start + chunk]
        aead.encrypt_into(bytes(12), piece, None, out[: len(piece) + 16])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,16,64,256", help="model sizes in MiB, comma-separated")
    parser.add_argument("--chunk-kib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    table = Table(title=f"Sealed IML throughput, {args.chunk_kib} KiB chunks, P-256, best of {args.repeats}")
    for column in ("model MiB", "operation", "MiB/s", "% of raw AES-GCM", "peak MiB"):
        table.add_column(column, justify="left" if column == "operation" else "right")

    # in memory-backed files where the machine has them: disk writeback would measure the disk, not the seal
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as folder:
        for size_mib in (int(s) for s in args.sizes.split(",")):
            model, sealed, opened = (Path(folder) / name for name in ("model", "model.iml", "model.out"))
            model.write_bytes(os.urandom(size_mib << 20))
            digest = hashlib.sha256(model.read_bytes()).hexdigest()
            data = model.read_bytes()
            aead = AESGCM(AESGCM.generate_key(bit_length=256))
            fields = dict(user_id="u", model_id="m", created_at=now, chunk_size=args.chunk_kib << 10)
            operations = {
                "raw AES-256-GCM (in memory, one shot)": lambda: aead.encrypt(bytes(12), data, None),
                "raw AES-256-GCM (in memory, same chunks)": lambda: raw_chunked(aead, data, args.chunk_kib << 10),
                "seal in memory, digest known (the pipeline's path)": lambda: seal_bytes(
                    data, key.public_key(), plaintext_sha256=digest, **fields),
                "seal, digest known (file to file)": lambda: seal(model, sealed, key.public_key(),
                                                                   plaintext_sha256=digest, **fields),
                "seal, digest computed (two passes)": lambda: seal(model, sealed, key.public_key(), **fields),
                "open (file to file), tags only": lambda: open_sealed(sealed, opened, key, verify_digest=False),
                "open (file to file), tags and digest": lambda: open_sealed(sealed, opened, key),
            }
            raw_seconds = None
            for name, operation in operations.items():
                seconds, peak = measure(operation, args.repeats)
                raw_seconds = raw_seconds or seconds
                table.add_row(str(size_mib), name, f"{size_mib / seconds:.0f}", f"{100 * raw_seconds / seconds:.0f}%",
                              f"{peak / 2**20:.1f}")
            assert opened.read_bytes() == data
            del data
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
