"""Read the script's credentials back from the kernel: no capability, no root, no groups."""

import sys


def escape(what: str) -> None:
    print(f"ESCAPE: {what}", flush=True)
    sys.exit(77)


def main() -> None:
    print("probe: start", flush=True)
    uid = sys.argv[1]
    with open("/proc/self/status") as f:
        status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    for key in ("Uid", "Gid", "Groups", "NoNewPrivs", "Seccomp"):
        print(f"{key}: {status.get(key)}")
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        print(f"{key}: {status[key]}")
        if int(status[key], 16):
            escape(f"{key} is {status[key]}")
    if status["NoNewPrivs"] != "1":
        escape("no_new_privs is not set")
    for key in ("Uid", "Gid"):
        if status[key].split() != [uid] * 4:
            escape(f"{key} is {status[key]!r}, expected {uid} four times")
    if status["Groups"].strip():
        escape(f"supplementary groups: {status['Groups']}")


main()
print("probe: done", flush=True)
