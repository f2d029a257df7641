"""Spawn cost: bare posix_spawn vs bubblewrap vs sandworker's full sandbox, in one run.

Runs /bin/true many times each way, interleaved round by round so that the
machine's noise hits every variant alike, and prints medians and ratios.
sandworker's figure is the whole run as the daemon will do it: workspace,
cgroups, launcher fork, every layer this host supports, exec, exit, kill check
and cgroup removal. Target on this machine class: sandworker <= 5x bwrap.
Needs root for the full sandbox. The strict policy is used with its `require`
narrowed to the layers this host has, and the layers left out are printed.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from sandworker.sandbox.outcome import Reason
from sandworker.sandbox.policy import load_policies
from sandworker.sandbox.runner import Request, Sandbox
from sandworker.sandbox.settings import SandboxSettings

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "200"))
WARMUP = 10
BWRAP = shutil.which("bwrap") or "/usr/bin/bwrap"
POLICY = Path(__file__).resolve().parent.parent / "policies" / "strict.toml"


def spawn_and_wait(argv: list[str]) -> Callable[[], None]:
    def once() -> None:
        pid = os.posix_spawn(argv[0], argv, {})
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise SystemExit(f"{argv} failed with wait status {status}")

    return once


def sandworker_run(state: Path) -> tuple[Callable[[], None], Callable[[], None], list[float]]:
    sandbox = Sandbox(SandboxSettings(state_dir=state))
    strict = load_policies([POLICY]).resolve("bench")
    missing = sandbox.host.missing
    for layer, why in missing.items():
        print(f"bench/spawn: layer {layer} not on this host, measured without it: {why}")
    policy = replace(strict, require=strict.require - set(missing))
    spawn_latencies: list[float] = []
    pending_cleanup: list[Request] = []
    counter = iter(range(10**9))

    def once() -> None:
        request = Request("bench", f"b{next(counter)}", argv=("/bin/true",))
        outcome = sandbox.run(request, policy, lambda _source, _data: None)
        if outcome.reason is not Reason.EXITED or outcome.exit_code != 0:
            raise SystemExit(f"sandworker run failed: {outcome}")
        spawn_latencies.append(outcome.spawn_seconds)
        pending_cleanup.append(request)

    def cleanup() -> None:  # removes run directories as the project account
        while pending_cleanup:
            sandbox.cleanup(pending_cleanup.pop(), policy)

    return once, cleanup, spawn_latencies


def main() -> int:
    if os.geteuid() != 0:
        print("bench/spawn: needs root (uid drop, cgroups)", file=sys.stderr)
        return 2
    if not os.access(BWRAP, os.X_OK):
        print("bench/spawn: bubblewrap missing: apt-get install bubblewrap", file=sys.stderr)
        return 2
    state = Path(tempfile.mkdtemp(prefix="sandworker-bench-", dir="/var/tmp"))
    try:
        full, cleanup, spawn_latencies = sandworker_run(state / "state")
        variants: dict[str, Callable[[], None]] = {
            "bare posix_spawn /bin/true": spawn_and_wait(["/bin/true"]),
            "bwrap --unshare-all --ro-bind / /": spawn_and_wait(
                [BWRAP, "--unshare-all", "--ro-bind", "/", "/", "/bin/true"]
            ),
            "sandworker full sandbox": full,
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for round_no in range(WARMUP + ROUNDS):
            for name, once in variants.items():
                start = time.perf_counter()
                once()
                if round_no >= WARMUP:
                    times[name].append(time.perf_counter() - start)
            if round_no == WARMUP - 1:
                spawn_latencies.clear()
        cleanup()  # after the timed rounds: removal spawns helpers that would disturb timing
    finally:
        # Only /bin/true ran, and every run directory was removed as the project account:
        # what is left holds no script-made entries.
        shutil.rmtree(state, ignore_errors=True)
    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    print(f"bench/spawn: {ROUNDS} rounds after {WARMUP} warm-up, interleaved; medians (ms)")
    for name, value in medians.items():
        p90 = statistics.quantiles(times[name], n=10)[-1] * 1000
        print(f"  {name:<36} {value:8.2f}   p90 {p90:8.2f}")
    spawn = statistics.median(spawn_latencies) * 1000
    print(f"  {'sandworker launch to exec':<36} {spawn:8.2f}")
    bare, bwrap, full_ms = medians.values()
    ratio = full_ms / bwrap
    print(f"ratio sandworker/bare  {full_ms / bare:6.2f}x")
    verdict = "met" if ratio <= 5 else "MISSED"
    print(f"ratio sandworker/bwrap {ratio:6.2f}x   (target <= 5x: {verdict})")
    # A miss fails a developer's run; with BENCH_TARGETS=report (CI: figures only, since
    # this VM is shared and timed tests are not wanted) it is printed and the run goes on.
    return 0 if ratio <= 5 or os.environ.get("BENCH_TARGETS") == "report" else 1


if __name__ == "__main__":
    sys.exit(main())
