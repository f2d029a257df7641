"""A bounded fork bomb: at most 3000 forks, children sleep. Counts what the limit let through.

argv: the policy's process limit.
"""

import os
import sys
import time


def escape(what: str) -> None:
    print(f"ESCAPE: {what}", flush=True)
    sys.exit(77)


def main() -> None:
    print("probe: start", flush=True)
    limit = int(sys.argv[1])
    started = refused = 0
    for _ in range(3000):
        try:
            pid = os.fork()
        except OSError:
            refused += 1
            continue
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        started += 1
    print(f"forks: {started} started, {refused} refused")
    if started >= limit:  # the script itself is one of the `limit` processes
        escape(f"{started} children alive at once with a limit of {limit}")
    if not refused:
        print("CONTROL FAILED: no fork was refused")
        sys.exit(3)


main()
print("probe: done", flush=True)
