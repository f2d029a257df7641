"""The launcher's plan, from policy and host support (no kernel involved: see integration/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandworker.sandbox.accounts import Account
from sandworker.sandbox.cgroups import Hierarchy
from sandworker.sandbox.host import HostSupport
from sandworker.sandbox.layers import Layer
from sandworker.sandbox.plan import SAFE_PATH, Refused, build
from sandworker.sandbox.settings import SandboxSettings
from sandworker.sandbox.workspace import RunDirs
from tests.sandboxing import make_policy

DIRS = RunDirs(
    Path("/s/projects/blue"), Path("/s/projects/blue/home"), Path("/s/projects/blue/work/r1")
)
ACCOUNT = Account(420000, 420000, "sandworker-blue")


def host(*missing: Layer) -> HostSupport:
    return HostSupport(True, False, 7, Hierarchy(), {layer: "absent" for layer in missing})


def plan(
    policy_changes: dict[str, object] | None = None,
    missing: tuple[Layer, ...] = (),
    env: dict[str, str] | None = None,
):  # type: ignore[no-untyped-def]
    return build(
        SandboxSettings(state_dir=Path("/s")),
        make_policy("blue", **(policy_changes or {})),
        host(*missing),
        account=ACCOUNT,
        dirs=DIRS,
        argv=["/bin/bash", "/s/projects/blue/work/r1/Script.sh"],
        parent_env=env or {},
    )


def test_full_host_applies_every_layer_in_order() -> None:
    result = plan()
    assert result.applied == list(Layer)
    assert result.spec["namespaces"] == ["mount", "pid", "ipc", "uts", "network"]
    assert result.spec["account"] == [420000, 420000]


def test_network_host_skips_the_network_namespace() -> None:
    result = plan({"network": "host"})
    assert "network" not in result.spec["namespaces"]
    assert Layer.NETWORK not in result.applied


def test_required_missing_layer_is_refused_with_every_reason() -> None:
    required = frozenset({Layer.LANDLOCK, Layer.CGROUP_PIDS})
    with pytest.raises(Refused, match="cgroup_pids: absent; landlock: absent"):
        plan({"require": required}, missing=(Layer.LANDLOCK, Layer.CGROUP_PIDS))


def test_optional_missing_layer_is_reported() -> None:
    result = plan(missing=(Layer.CGROUP_MEMORY,))
    assert "layer cgroup_memory: NOT applied: absent" in result.debug
    assert result.spec["rlimits"]["RLIMIT_DATA"] == [256 << 20, 256 << 20]  # the fallback


def test_environment_is_the_allow_list_plus_per_project_values() -> None:
    parent = {"LANG": "de_DE.UTF-8", "SECRET": "x", "LD_PRELOAD": "/evil.so", "PATH": "/evil"}
    env = plan({"environment_pass": ("LANG",), "environment_set": {"TZ": "UTC"}}, env=parent).spec[
        "env"
    ]
    assert env == {
        "LANG": "de_DE.UTF-8",
        "TZ": "UTC",
        "PATH": SAFE_PATH,
        "HOME": str(DIRS.home),
        "TMPDIR": "/tmp",
        "USER": "sandworker-blue",
        "LOGNAME": "sandworker-blue",
    }


def test_without_mount_namespace_tmp_is_not_shared_host_tmp() -> None:
    result = plan(missing=(Layer.MOUNT,))
    assert result.spec["env"]["TMPDIR"] == str(DIRS.cwd)
    rules = result.spec["landlock"]
    assert rules is not None and "/tmp" not in rules["read_write"] and rules["list_only"] == []


def test_landlock_grants_only_workspace_and_private_dirs_for_writing() -> None:
    rules = plan().spec["landlock"]
    assert rules is not None
    assert set(rules["read_write"]) == {
        str(DIRS.home),
        str(DIRS.cwd),
        "/tmp",
        "/dev/shm",
        "/dev/null",
        "/dev/zero",
        "/dev/full",
    }
    assert rules["list_only"] == ["/", "/dev"] and rules["scoped"] is True


def test_state_and_config_dirs_are_hidden() -> None:
    assert plan().spec["mounts"]["hide"] == ["/etc/sandworker", "/s"]


def test_rlimits_follow_policy_and_nproc_is_per_project() -> None:
    limits = plan({"limits": {"cpu_seconds": 9, "processes": 10}, "concurrency": 3}).spec["rlimits"]
    assert limits["RLIMIT_CPU"] == [9, 10]
    assert limits["RLIMIT_CORE"] == [0, 0]
    assert limits["RLIMIT_NPROC"] == [30, 30]


@pytest.mark.parametrize("path", ["/s", "/s/projects/red", "/"])
def test_policy_paths_overlapping_the_state_dir_are_refused(path: str) -> None:
    with pytest.raises(Refused, match=f"policy path {path} overlaps the state directory /s"):
        plan({"read_only_paths": (path,)})


def test_unrelated_policy_paths_are_bound() -> None:
    result = plan({"read_only_paths": ("/srv/tools",), "read_write_paths": ("/srv/cache",)})
    assert "/srv/tools" in result.spec["mounts"]["read_only"]
    assert "/srv/cache" in result.spec["mounts"]["read_write"]
