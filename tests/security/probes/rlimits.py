"""Read the enforced rlimits back from the kernel and try to raise them.

argv: cpu seconds, open files, file size bytes, processes (per uid), as the policy sets them.
"""

import resource
import sys


def escape(what: str) -> None:
    print(f"ESCAPE: {what}", flush=True)
    sys.exit(77)


def main() -> None:
    print("probe: start", flush=True)
    cpu, nofile, fsize, nproc = (int(a) for a in sys.argv[1:5])
    wanted = {
        "RLIMIT_CPU": cpu + 1,  # soft limit, then SIGKILL one second later
        "RLIMIT_NOFILE": nofile,
        "RLIMIT_FSIZE": fsize,
        "RLIMIT_NPROC": nproc,
        "RLIMIT_CORE": 0,
    }
    for name, most in wanted.items():
        soft, hard = resource.getrlimit(getattr(resource, name))
        print(f"{name}: soft {soft} hard {hard} (policy allows at most {most})")
        if hard == resource.RLIM_INFINITY or hard > most or soft > hard:
            escape(f"{name} hard limit {hard} exceeds {most}")
        try:
            resource.setrlimit(getattr(resource, name), (hard + 1, hard + 1))
        except (OSError, ValueError) as exc:
            print(f"denied: raise {name}: {exc}")
        else:
            escape(f"raised {name} above its hard limit")


main()
print("probe: done", flush=True)
