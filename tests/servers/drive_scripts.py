"""Run scripts through the reactor driver (a real reactor, real sandbox); print outcomes.

Used by tests/integration/test_driver.py as a subprocess: argv[1] is a state dir.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task

from sandworker.daemon.driver import ScriptDriver
from sandworker.sandbox.outcome import Outcome
from sandworker.sandbox.runner import Request, Sandbox
from tests.sandboxing import make_policy, new_sandbox

SCENARIOS: dict[str, dict[str, Any]] = {
    "exit": {"body": "echo out; echo err >&2; exit 3"},
    "timeout": {"body": "trap '' TERM; sleep 60", "policy": {"timeout_seconds": 1}},
    "cancel": {"body": "echo READY; sleep 60", "cancel_after": 0.5},
    "flood": {"body": "yes", "policy": {"limits": {"output_bytes": 100_000}}},
    "lingering": {"body": "sleep 60 & echo started"},
    "setup": {"body": "true", "policy": {"read_write_paths": ("/nonexistent-for-test",)}},
}


def drive(sandbox: Sandbox, name: str, spec: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
    done: defer.Deferred[dict[str, Any]] = defer.Deferred()
    output: dict[str, int] = {"stdout": 0, "stderr": 0}
    text: list[str] = []

    def on_output(source: str, data: bytes) -> None:
        output[source] += len(data)
        if len(text) < 10:
            text.append(f"{source}:{data.decode(errors='replace')}")

    def on_done(outcome: Outcome) -> None:
        done.callback(
            {
                "reason": str(outcome.reason),
                "exit_code": outcome.exit_code,
                "signal": outcome.signal,
                "message": outcome.message,
                "bytes": output,
                "text": "".join(text),
            }
        )

    policy = make_policy("blue", **spec.get("policy", {}))
    running = sandbox.start(Request("blue", f"drv-{name}", body=spec["body"]), policy)
    driver = ScriptDriver(running, sandbox.zygote, on_output, on_done)
    if "cancel_after" in spec:
        reactor.callLater(spec["cancel_after"], driver.cancel)  # type: ignore[attr-defined]
    return done


async def main(_reactor: object, state: str) -> None:
    sandbox = new_sandbox(Path(state))
    results = {}
    for name, spec in SCENARIOS.items():
        results[name] = await drive(sandbox, name, spec)
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    task.react(lambda r: defer.ensureDeferred(main(r, sys.argv[1])))
