"""The supervisor side of one script: spawn the launcher, watch it, end it, say how it ended.

`Sandbox` is the narrow face the daemon and the CLI use: `start()` takes a
request and the effective policy and returns a `Running` script whose output
descriptors the caller reads; `run()` is the blocking loop used by
`sandworker sandbox run` and the tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import select
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .accounts import Account, Accounts
from .bootstrap import BOOTSTRAP, Variable, files_for
from .cgroups import ScriptGroup, instance_tag
from .deploy import CONFIG as DEPLOY_CONFIG
from .effective import EffectivePolicy
from .host import HostSupport, probe
from .layers import Layer
from .outcome import Outcome, Reason, describe, setup_report
from .plan import Plan, Refused, build, check_required
from .settings import SandboxSettings
from .syntaxes import SYNTAXES, interpreter_for
from .workspace import RunDirs, Workspaces
from .zygote import Zygote, ZygoteError

DEPLOY = Path(__file__).with_name("deploy.py")
DEPLOY_SCRIPT = ".octopus.deploy.py"
RESERVED_SCRIPT = ".octopus."  # the start's own script in a package step: no name clash
SETUP_DEADLINE = 30.0
BACKUP_DEADLINE = 10.0  # after the first SIGKILL, wait at most this long for the exit


@dataclass(frozen=True)
class Request:
    """One script: either a body in a syntax, or (trial CLI only) an argv to exec."""

    project: str
    run_id: str
    syntax: str = "bash"
    body: str | None = None
    arguments: tuple[str, ...] = ()
    argv: tuple[str, ...] = ()
    variables: tuple[Variable, ...] = ()  # (name, value, sensitive): bootstrap.py
    package: Package | None = None  # a package step (deploy.py): body, if any, runs in it


@dataclass(frozen=True)
class Package:
    """A package from the project's cache, extracted and run by deploy.py in the sandbox."""

    path: str  # opened by the supervisor (O_NOFOLLOW) and given to the run as its stdin
    name: str  # its name in the cache (the extension says the format)
    substitute: tuple[str, ...] = ()  # globs of files to substitute #{Name} in


OutputSink = Callable[[str, bytes], None]  # (source: "stdout"/"stderr"/"debug", data)


@dataclass
class Running:
    pid: int
    pidfd: int  # signals go through it: immune to pid reuse
    stdout: int
    stderr: int
    status: int
    group: ScriptGroup | None
    plan: Plan
    account: Account
    dirs: RunDirs
    started: float
    policy: EffectivePolicy
    ended_by: Reason | None = None

    def setup_error(self, deadline: float = SETUP_DEADLINE) -> str | None:
        """Block until the launcher has exec'd the script (None) or failed (the reason)."""
        chunks = []
        end = time.monotonic() + deadline
        try:
            while True:
                left = end - time.monotonic()
                ready, _, _ = select.select([self.status], [], [], max(left, 0))
                if not ready:
                    self.kill()
                    return f"launcher did not finish setting up within {deadline:.0f}s"
                chunk = os.read(self.status, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(self.status)
        return setup_report(b"".join(chunks))

    def terminate(self, reason: Reason) -> None:
        """Ask the whole tree to stop (TERM); `kill()` follows after the grace period."""
        self.ended_by = self.ended_by or reason
        self._signal(signal.SIGTERM)  # the launcher forwards it to init, init to everyone
        if self.group is not None and Layer.PID not in self.plan.applied:
            self.group.signal_all(signal.SIGTERM)

    def kill(self, reason: Reason | None = None) -> None:
        """Kill every process of the run, now."""
        if reason is not None:
            self.ended_by = self.ended_by or reason
        self._signal(signal.SIGKILL)  # its init then dies of PDEATHSIG: the pid namespace ends
        if self.group is not None:
            self.group.kill()

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, sig)

    def finish(self, raw_status: int, setup_error: str | None) -> Outcome:
        """Make sure nothing is left, remove the cgroups, and describe the ending."""
        hits: dict[str, int] = {}
        if self.group is not None:
            hits = self.group.events()
            if not self.group.kill():
                self.plan.debug.append("processes survived cgroup kill; see the host log")
            self.group.remove()
        for fd in (self.stdout, self.stderr, self.pidfd):
            with contextlib.suppress(OSError):
                os.close(fd)
        duration = time.monotonic() - self.started
        outcome = describe(raw_status, setup_error, self.ended_by, hits, self.policy)
        outcome.duration_seconds = duration
        outcome.limit_hits = hits
        return outcome


class Sandbox:
    """Runs scripts for many projects on one host under one settings object."""

    def __init__(self, settings: SandboxSettings, host: HostSupport | None = None) -> None:
        self.settings = settings
        self.host = host or probe()
        self.accounts = Accounts(settings.state_dir, settings.uid_range)
        self.cgroup_tag = instance_tag(settings.state_dir)  # run groups: sandworker-<tag>-<run>
        self.workspaces = Workspaces(settings.state_dir)
        self.zygote = Zygote.shared(settings.launcher_python)

    def start(self, request: Request, policy: EffectivePolicy) -> Running:
        """Prepare the workspace and cgroups and spawn the launcher. Raises Refused."""
        check_required(policy, self.host)  # refuse before touching anything
        self.workspaces.prepare()
        account = self._account(request.project, policy)
        owner = account or _self()
        cwd = self.workspaces.run_path(request.project, request.run_id)
        if request.package is not None:
            argv, files = self._package_step(request, policy, cwd)
        elif request.argv:
            if not os.path.isabs(request.argv[0]):
                raise Refused(f"{request.argv[0]!r}: give the program as an absolute path")
            argv, files = list(request.argv), {}
        else:
            argv, files = self._script(request, policy, cwd)
        stdin = _open_package(request.package) if request.package else None
        try:
            dirs = self.workspaces.create_run(request.project, request.run_id, owner, files)
            try:
                plan = build(self.settings, policy, self.host, account=owner, dirs=dirs, argv=argv)
            except BaseException:
                dirs.close()
                raise
        except BaseException:
            if stdin is not None:
                os.close(stdin)
            raise
        return self._spawn(plan, policy, owner, dirs, request.run_id, stdin=stdin)

    def _script(
        self, request: Request, policy: EffectivePolicy, cwd: Path
    ) -> tuple[list[str], dict[str, bytes]]:
        """A script body in its syntax: the argv and the run directory's files."""
        try:
            interp = interpreter_for(request.syntax, self.settings.interpreters, policy.syntaxes)
        except ValueError as exc:
            raise Refused(str(exc)) from None
        syntax = SYNTAXES[request.syntax]
        files = {syntax.filename: (request.body or "").encode()}
        files |= files_for(request.syntax, request.variables)
        args = list(request.arguments)
        if request.syntax in BOOTSTRAP:  # the helpers first, then the script
            script, args = str(cwd / BOOTSTRAP[request.syntax]), [syntax.filename, *args]
        else:
            script = str(cwd / syntax.filename)
        return syntax.argv(interp, script, args), files

    def _package_step(
        self, request: Request, policy: EffectivePolicy, cwd: Path
    ) -> tuple[list[str], dict[str, bytes]]:
        """deploy.py, its settings, and a bootstrap for each syntax the stages may use."""
        assert request.package is not None
        python = self.settings.interpreters.get("python", "")
        if not os.path.isabs(python) or not os.access(python, os.X_OK):
            raise Refused(
                "packages are extracted and run by sandworker's package runner, which needs"
                f" the python interpreter (interpreters.python, {python or 'unset'}) on this"
                " worker"
            )
        files = {DEPLOY_SCRIPT: DEPLOY.read_bytes()}
        files |= files_for("python", request.variables)  # deploy.py reads its variables file
        syntaxes: dict[str, list[str]] = {}
        for syntax in policy.syntaxes:
            try:
                interp = interpreter_for(syntax, self.settings.interpreters, policy.syntaxes)
            except ValueError:
                continue  # a stage in it is refused by deploy.py, with the reason
            files |= files_for(syntax, request.variables)
            syntaxes[syntax] = SYNTAXES[syntax].argv(interp, BOOTSTRAP[syntax], [])
        script = ""
        if request.body:
            if request.syntax not in syntaxes:
                raise Refused(f"syntax {request.syntax!r} is not available for this project")
            script = RESERVED_SCRIPT + SYNTAXES[request.syntax].filename
            files[script] = request.body.encode()
        limits = policy.limits
        config = {
            "package": request.package.name,
            "max_bytes": limits.package_bytes,
            "max_files": limits.package_files,
            "syntaxes": syntaxes,
            "substitute": list(request.package.substitute),
            "arguments": list(request.arguments),
            "script": script,
            "script_syntax": request.syntax,
        }
        files[DEPLOY_CONFIG] = json.dumps(config).encode()
        return [python, "-I", "-S", str(cwd / DEPLOY_SCRIPT)], files

    def _spawn(
        self,
        plan: Plan,
        policy: EffectivePolicy,
        account: Account,
        dirs: RunDirs,
        run_id: str,
        *,
        stdin: int | None = None,
    ) -> Running:
        group, null, made = self._open(plan, policy, dirs, run_id, stdin)
        status_r, status_w, go_r, go_w, out_r, out_w, err_r, err_w = made
        theirs = [null, out_w, err_w, status_w, dirs.home_fd, dirs.cwd_fd, go_r]
        started = time.monotonic()
        try:
            pid = self.zygote.spawn(plan.spec, theirs)
            pidfd = os.pidfd_open(pid)
            if group is not None:
                try:
                    group.place(pid)
                except ProcessLookupError:
                    pass  # it failed already: setup_error() reads why from the status pipe
                else:
                    os.write(go_w, b"g")  # placed: the launcher may now fork and exec
            else:
                os.write(go_w, b"g")
        except BaseException:
            for fd in (status_r, out_r, err_r):
                os.close(fd)
            if group is not None:
                group.kill()
                group.remove()
            raise
        finally:
            for fd in (null, out_w, err_w, status_w, go_r, go_w):
                os.close(fd)
            dirs.close()
        return Running(
            pid, pidfd, out_r, err_r, status_r, group, plan, account, dirs, started, policy
        )

    def _open(
        self, plan: Plan, policy: EffectivePolicy, dirs: RunDirs, run_id: str, stdin: int | None
    ) -> tuple[ScriptGroup | None, int, list[int]]:
        """The run's cgroups, its stdin and its four pipes; on a failure nothing stays open."""
        wanted = set(plan.applied)
        group = None
        null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) if stdin is None else stdin
        made: list[int] = []
        try:
            if wanted & {Layer.CGROUP_MEMORY, Layer.CGROUP_PIDS, Layer.CGROUP_CPU,
                         Layer.CGROUP_KILL}:  # fmt: skip
                name = f"{self.cgroup_tag}-{run_id}"
                group = ScriptGroup.create(self.host.hierarchy, name, policy.limits, wanted)
            for _ in range(4):
                made.extend(os.pipe())
        except BaseException:  # (out of descriptors, a cgroup refused)
            for fd in (null, *made):
                os.close(fd)
            if group is not None:
                group.remove()
            dirs.close()
            raise
        return group, null, made

    def cleanup(self, request: Request, policy: EffectivePolicy) -> None:
        """Remove the run's working directory, as the project's account (never as root)."""
        account = self._account(request.project, policy) or _self()
        python = self.settings.launcher_python
        self.workspaces.remove_run(request.project, request.run_id, account, python)

    def _account(self, project: str, policy: EffectivePolicy) -> Account | None:
        return self.accounts.for_project(project, policy.account) if self.host.root else None

    def run(
        self,
        request: Request,
        policy: EffectivePolicy,
        sink: OutputSink,
        cancel: Callable[[], bool] = lambda: False,
    ) -> Outcome:
        """Run one script to the end in the foreground, streaming its output to `sink`."""
        try:
            running = self.start(request, policy)
        except Refused as exc:
            return Outcome(Reason.REFUSED, None, None, str(exc))
        for line in running.plan.debug:
            sink("debug", f"{line}\n".encode())
        setup_error = running.setup_error()
        spawn_seconds = time.monotonic() - running.started
        try:
            raw = (
                _supervise(running, sink, cancel, self.zygote)
                if setup_error is None
                else self.zygote.status(running.pid)
            )
        except ZygoteError as exc:
            # The launcher zygote died under us: whatever the run left is killed, and the
            # outcome says so instead of guessing an exit status.
            running.kill(Reason.LOST)
            raw = signal.SIGKILL
            running.plan.debug.append(f"lost the launcher: {exc}")
        outcome = running.finish(raw, setup_error)
        outcome.spawn_seconds = spawn_seconds
        return outcome


def _open_package(package: Package) -> int:
    """The package, for the run's standard input: the sandbox cannot reach the cache."""
    try:
        return os.open(package.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise Refused(f"package {package.name}: {exc.strerror}") from None


def _self() -> Account:
    """The invoking user, for unprivileged mode (no account switch)."""
    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = str(os.getuid())
    return Account(os.getuid(), os.getgid(), name)


@dataclass
class Supervision:
    """The rules of a running script, independent of who waits on its descriptors.

    The blocking loop below and the daemon's reactor both drive one of these:
    `output()` for each chunk read, `tick()` every ~50 ms, `exited()` once the
    launcher's pidfd is readable. TERM on timeout or cancel, KILL after the grace
    period (repeated), then a backup deadline; output beyond the limit is cut
    and kills the run.
    """

    running: Running
    zygote: Zygote
    printed: int = 0
    kill_at: float | None = None
    give_up_at: float | None = None

    def output(self, data: bytes) -> bytes:
        """What of `data` may be kept; going over the limit kills the whole run."""
        limit = self.running.policy.limits.output_bytes
        kept = data[: max(limit - self.printed, 0)]
        self.printed += len(data)
        if self.printed > limit and self.running.ended_by is None:
            self.running.kill(Reason.OUTPUT)
        return kept

    def tick(self, now: float, cancelled: bool) -> int | None:
        """Act on the clock; a raw wait status when waiting any longer is pointless."""
        running = self.running
        timed_out = now >= running.started + running.policy.timeout_seconds
        if running.ended_by is None and (timed_out or cancelled):
            running.terminate(Reason.TIMEOUT if timed_out else Reason.CANCELLED)
            self.kill_at = now + running.policy.kill_grace_seconds
        if self.kill_at is not None and now >= self.kill_at:
            running.kill()
            self.kill_at = now + 1.0
            self.give_up_at = self.give_up_at or now + BACKUP_DEADLINE
        if self.give_up_at is not None and now >= self.give_up_at:
            running.plan.debug.append(
                f"launcher pid {running.pid} did not exit {BACKUP_DEADLINE:.0f}s after"
                " SIGKILL; outcome recorded without its exit status"
            )
            return signal.SIGKILL  # unkillable (stuck in the kernel): a definite outcome
        if not self.zygote.alive():
            raise ZygoteError("the launcher zygote died while the script ran")
        return None

    def exited(self) -> int:
        """The launcher ended: kill anything left in the run's groups; its raw wait status."""
        raw = self.zygote.status(self.running.pid)
        if self.running.group is not None:
            self.running.group.kill()
        return raw


def _supervise(
    running: Running, sink: OutputSink, cancel: Callable[[], bool], zygote: Zygote
) -> int:
    """Pump output, enforce timeout, output limit and cancel; return the raw wait status."""
    rules = Supervision(running, zygote)
    sel = selectors.DefaultSelector()
    sel.register(running.stdout, selectors.EVENT_READ, "stdout")
    sel.register(running.stderr, selectors.EVENT_READ, "stderr")
    sel.register(running.pidfd, selectors.EVENT_READ, "exit")
    raw: int | None = None
    drain_until = 0.0
    try:
        while raw is None or (sel.get_map() and time.monotonic() < drain_until):
            if raw is None and (given_up := rules.tick(time.monotonic(), cancel())) is not None:
                return given_up
            for key, _ in sel.select(timeout=0.05):
                if key.data == "exit":
                    raw = rules.exited()
                    sel.unregister(running.pidfd)
                    drain_until = time.monotonic() + 2.0
                    continue
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fd)
                    continue
                sink(key.data, rules.output(data))
    finally:
        sel.close()
    return raw
