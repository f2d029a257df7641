"""The launcher's plan: from request, effective policy and host support to a LaunchSpec.

Pure: it touches nothing, so unit tests check it directly. Whether the plan
actually confines a script is shown only by the root integration tests.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .accounts import Account
from .effective import EffectivePolicy
from .host import HostSupport
from .layers import Layer
from .policy_checks import overlap
from .settings import SYSTEM_DIRS, SandboxSettings
from .spec import LandlockRules, LaunchSpec
from .workspace import RunDirs

HOME_FD, CWD_FD = 5, 6  # where RunDirs.home_fd and cwd_fd land in the launcher
MEMLOCK_BYTES = 8 << 20  # enough for gpg and friends; nothing a script can pin the host with
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_NAMESPACE_LAYERS = (Layer.MOUNT, Layer.PID, Layer.IPC, Layer.UTS, Layer.NETWORK)
_ALWAYS = (Layer.SESSION, Layer.DESCRIPTORS, Layer.ENVIRONMENT, Layer.RLIMITS, Layer.NO_NEW_PRIVS)


class Refused(RuntimeError):
    """The script may not run: a required layer is missing, or the request is not allowed."""


@dataclass
class Plan:
    spec: LaunchSpec
    applied: list[Layer]
    missing: dict[Layer, str]  # layers this run goes without, and why
    debug: list[str] = field(default_factory=list)


def wanted_layers(policy: EffectivePolicy) -> list[Layer]:
    """The layers this policy calls for; network only when it asks for no network."""
    return [layer for layer in Layer if layer is not Layer.NETWORK or policy.network == "none"]


def check_required(policy: EffectivePolicy, host: HostSupport) -> dict[Layer, str]:
    """Missing layers; raises Refused if the policy requires one of them."""
    missing = {
        layer: host.missing[layer] for layer in wanted_layers(policy) if layer in host.missing
    }
    refused = sorted(layer for layer in policy.require if layer in missing)
    if refused:
        reasons = "; ".join(f"{layer}: {missing[layer]}" for layer in refused)
        raise Refused(
            f"policy for project {policy.project!r} requires layers this host lacks: {reasons}"
        )
    return missing


def environment(
    policy: EffectivePolicy, account: Account, dirs: RunDirs, tmp: str, parent: Mapping[str, str]
) -> dict[str, str]:
    env = {name: parent[name] for name in policy.environment_pass if name in parent}
    env.update(policy.environment_set)
    env.setdefault("LANG", "C.UTF-8")
    env.update(
        PATH=SAFE_PATH, HOME=str(dirs.home), TMPDIR=tmp, USER=account.name, LOGNAME=account.name
    )
    return env


def rlimits(policy: EffectivePolicy, applied: set[Layer]) -> dict[str, list[int]]:
    lim = policy.limits
    limits = {
        "RLIMIT_CORE": [0, 0],
        "RLIMIT_CPU": [lim.cpu_seconds, lim.cpu_seconds + 1],  # SIGXCPU, then SIGKILL
        "RLIMIT_NOFILE": [lim.open_files, lim.open_files],
        "RLIMIT_FSIZE": [lim.file_size_bytes, lim.file_size_bytes],
        # never inherited from the supervisor: no raised priority, little locked memory
        "RLIMIT_NICE": [0, 0],
        "RLIMIT_RTPRIO": [0, 0],
        "RLIMIT_MEMLOCK": [MEMLOCK_BYTES, MEMLOCK_BYTES],
    }
    if Layer.ACCOUNT in applied:  # per uid, and the uid is the project's alone
        nproc = lim.processes * max(policy.concurrency, 1)
        limits["RLIMIT_NPROC"] = [nproc, nproc]
    if Layer.CGROUP_MEMORY not in applied:  # per process only: weaker, but not nothing
        limits["RLIMIT_DATA"] = [lim.memory_bytes, lim.memory_bytes]
    return limits


def build(
    settings: SandboxSettings,
    policy: EffectivePolicy,
    host: HostSupport,
    *,
    account: Account,
    dirs: RunDirs,
    argv: list[str],
    parent_env: Mapping[str, str] | None = None,
) -> Plan:
    missing = check_required(policy, host)
    for path in (*policy.read_only_paths, *policy.read_write_paths):
        if overlap(path, str(settings.state_dir)):
            raise Refused(
                f"policy path {path} overlaps the state directory {settings.state_dir}, which"
                " holds every project's workspace; grant a path outside it"
            )
    applied = [layer for layer in wanted_layers(policy) if layer not in missing]
    applied_set = set(applied)
    namespaces = [str(layer) for layer in _NAMESPACE_LAYERS if layer in applied_set]
    interpreter_dirs = [os.path.dirname(argv[0])] if not argv[0].startswith(SYSTEM_DIRS) else []
    read_only = [*SYSTEM_DIRS, *interpreter_dirs, *policy.read_only_paths]
    read_write = [str(dirs.home), str(dirs.cwd), *policy.read_write_paths]
    private_tmp = Layer.MOUNT in applied_set
    landlock: LandlockRules | None = None
    if Layer.LANDLOCK in applied_set:
        devices_rw = ["/dev/null", "/dev/zero", "/dev/full"]
        # Inside our own root, "/" and "/dev" are tmpfs we built: listing them reveals nothing,
        # and listing is all the rule grants (no file under them becomes readable by it).
        private = ["/tmp", "/dev/shm"] if private_tmp else []  # noqa: S108 - private tmpfs
        landlock = {
            "list_only": ["/", "/dev"] if private_tmp else [],
            "read_only": [*read_only, "/proc", "/dev/random", "/dev/urandom"],
            "read_write": [*read_write, *private, *devices_rw],
            "scoped": Layer.LANDLOCK_SCOPE in applied_set,
        }
    spec: LaunchSpec = {
        "argv": argv,
        "env": environment(
            policy,
            account,
            dirs,
            "/tmp" if private_tmp else str(dirs.cwd),  # noqa: S108
            os.environ if parent_env is None else parent_env,
        ),
        "cwd": str(dirs.cwd),
        "fds": {str(dirs.home): HOME_FD, str(dirs.cwd): CWD_FD},
        "account": [account.uid, account.gid] if Layer.ACCOUNT in applied_set else None,
        "userns": host.userns and not host.root,
        "namespaces": namespaces,
        "mounts": {
            "read_only": read_only,
            "read_write": read_write,
            "hide": [*settings.hidden, str(settings.state_dir)],
            "tmp_bytes": policy.limits.tmp_bytes,
        },
        "rlimits": rlimits(policy, applied_set),
        "landlock": landlock,
    }
    debug = [f"layer {layer}: applied" for layer in applied]
    debug += [f"layer {layer}: NOT applied: {why}" for layer, why in missing.items()]
    return Plan(spec, applied, missing, debug)
