"""Watch the whole machine with perf, or load eBPF: both reach far beyond the project."""

import ctypes
import os
import struct
import sys

SYS_PERF_EVENT_OPEN, SYS_BPF = 298, 321
PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK = 1, 0
BPF_MAP_CREATE, BPF_MAP_TYPE_ARRAY = 0, 2

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def escape(what: str) -> None:
    print(f"ESCAPE: {what}", flush=True)
    sys.exit(77)


def main() -> None:
    print("probe: start", flush=True)
    attr = ctypes.create_string_buffer(
        struct.pack("IIQ", PERF_TYPE_SOFTWARE, 128, PERF_COUNT_SW_CPU_CLOCK), 128
    )
    for cpu in range(os.cpu_count() or 1):
        fd = libc.syscall(SYS_PERF_EVENT_OPEN, attr, -1, cpu, -1, 0)
        if fd >= 0:
            escape(f"perf_event_open on every process of cpu {cpu}")
        print(f"denied: perf_event_open(pid=-1, cpu={cpu}): {os.strerror(ctypes.get_errno())}")
    battr = ctypes.create_string_buffer(struct.pack("IIII", BPF_MAP_TYPE_ARRAY, 4, 4, 1), 72)
    fd = libc.syscall(SYS_BPF, BPF_MAP_CREATE, battr, 72)
    if fd >= 0:
        escape("created an eBPF map")
    print(f"denied: bpf(BPF_MAP_CREATE): {os.strerror(ctypes.get_errno())}")


main()
print("probe: done", flush=True)
