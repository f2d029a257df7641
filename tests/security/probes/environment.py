"""The script's environment holds only the allow-listed names, with sandbox values.

argv: red's HOME. Anything else (the supervisor's variables, LD_PRELOAD,
PYTHONPATH, ...) is a leak.
"""

import os
import sys

ALLOWED = {"PATH", "HOME", "TMPDIR", "USER", "LOGNAME", "LANG"}


def escape(what: str) -> None:
    print(f"ESCAPE: {what}", flush=True)
    sys.exit(77)


def main() -> None:
    print("probe: start", flush=True)
    env = dict(os.environ)
    print(f"environment names: {sorted(env)}")
    extra = sorted(set(env) - ALLOWED)
    if extra:
        escape(f"unexpected variables reached the script: { {k: env[k] for k in extra} }")
    expected = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": sys.argv[1],
        "TMPDIR": "/tmp",
        "USER": "sandworker-red",
        "LOGNAME": "sandworker-red",
    }
    for name, value in expected.items():
        if env.get(name) != value:
            escape(f"{name}={env.get(name)!r}, expected {value!r}")


main()
print("probe: done", flush=True)
