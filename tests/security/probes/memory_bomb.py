"""Allocate (and touch) 1 GiB in 16 MiB steps; the memory limit must kill us first."""

import sys

STEP = 16 << 20
print("probe: start", flush=True)
chunks = []
for i in range(1, 65):
    chunks.append(b"\x01" * STEP)
    if i % 4 == 0:
        print(f"allocated {i * 16} MiB", flush=True)
print("ESCAPE: allocated 1 GiB", flush=True)
sys.exit(77)
