"""Escape probes: project `red` attacks project `blue`, the host and the supervisor.

Every probe is a real script run as `red` in the real sandbox while `blue` runs
next to it (see conftest.py). A probe prints what it tries, exits 77 as soon as
a forbidden action succeeds (nsjail's convention), exits 3 when a positive
control fails (so that a probe cannot pass by being broken) and prints
"probe: done" when it reached its end. Each test then checks that the probe
ran to its end, did not exit 77, and that blue's canary is nowhere in red's
output. conftest.py checks after every test that no red process is left and
that blue is still alive.

Bash probes are in the PROBES table below; placeholders like ``@BLUE_WORK@``
are replaced with the world's values. Python probes live in probes/*.py and
take their values as arguments. Probes of what the launcher inherits from its
supervisor (environment, descriptors, session keyring) run from a supervisor
process started for them (fresh_supervisor.py), since the launcher of this
process was started long before the bait was laid.

`pytest -rP tests/security` shows, for every probe, what it tried and how the
sandbox refused it.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from sandworker.sandbox.outcome import Outcome, Reason
from sandworker.sandbox.runner import Sandbox
from sandworker.sandbox.settings import SandboxSettings
from tests.sandboxing import LIMITS, Result, make_policy, run
from tests.security.conftest import World, wait_gone

pytestmark = pytest.mark.root

ESCAPED = 77
PROBES_DIR = Path(__file__).with_name("probes")

PRELUDE = """\
set -u
me=$(id -u)
escape() { echo "ESCAPE: $*"; exit 77; }
control_failed() { echo "CONTROL FAILED: $*"; exit 3; }
# try_read FILE...: reading any of them is an escape
try_read() {
  local f out
  for f in "$@"; do
    if out=$(head -c 200 -- "$f" 2>&1); then escape "read $f: $out"; fi
    echo "denied: read $f: $out"
  done
}
# try_list DIR...: listing any of them is an escape
try_list() {
  local d out
  for d in "$@"; do
    if out=$(ls -A -- "$d" 2>&1); then escape "listed $d: $out"; fi
    echo "denied: list $d: $out"
  done
}
# try_write FILE...: opening any of them for writing is an escape (nothing is written)
try_write() {
  local f out
  for f in "$@"; do
    if out=$( (: >> "$f") 2>&1 ); then escape "opened $f for writing"; fi
    echo "denied: write $f: $out"
  done
}
ours() { [ "$(stat -c %u "/proc/$1" 2>/dev/null)" = "$me" ]; }
# others: blue's host pids, then every existing pid among /proc and guesses 1-40 that is not
# red's own. (A guessed pid that does not exist yet would be red's next process.)
others() {
  local p d
  for p in @BLUE_PIDS@; do ours "$p" || echo "$p"; done
  { seq 1 40; for d in /proc/[0-9]*; do echo "${d#/proc/}"; done; } | sort -nu |
    while read -r p; do [ -e "/proc/$p" ] && ! ours "$p" && echo "$p"; done
}
echo "probe: start"
"""
EPILOGUE = '\necho "probe: done"\nexit 0\n'


@dataclass(frozen=True)
class Probe:
    """One attempt. `body` is bash (placeholders allowed) or the name of a probes/*.py file."""

    id: str  # what the probe must not achieve: "red cannot <id>"
    body: str
    syntax: str = "bash"
    args: Callable[[World], tuple[str, ...]] = lambda _w: ()
    policy: dict[str, object] = field(default_factory=dict)
    # extra host-side assertions after the run
    check: Callable[[World, Result], None] | None = None


def placeholders(world: World) -> dict[str, str]:
    return {
        "@BLUE_WORK@": str(world.blue_work),
        "@BLUE_HOME@": str(world.blue_home),
        "@BLUE_PIDS@": " ".join(map(str, world.blue_pids)),
        "@BLUE_UID@": str(world.blue_uid),
        "@RED_UID@": str(world.red_uid),
        "@STATE@": str(world.state),
        "@BASE@": str(world.base),
        "@HOST_SECRET@": str(world.host_secret),
    }


def script(body: str, world: World) -> str:
    text = PRELUDE + body + EPILOGUE
    for key, value in placeholders(world).items():
        text = text.replace(key, value)
    leftover = re.findall(r"@[A-Z_]+@", text)
    assert not leftover, f"unknown placeholders {leftover}"
    return text


def run_probe(world: World, probe: Probe, sandbox: Sandbox | None = None) -> Result:
    policy = make_policy("red", **{"timeout_seconds": 60, **probe.policy})
    if probe.syntax == "python":
        source = (PROBES_DIR / probe.body).read_text()
        return run(
            sandbox or world.sandbox,
            "red",
            source,
            syntax="python",
            policy=policy,
            args=probe.args(world),
        )
    return run(sandbox or world.sandbox, "red", script(probe.body, world), policy=policy)


def fresh_supervisor(
    world: World,
    runs: list[tuple[str, Probe]],
    *,
    keyring_secret: str | None = None,
    pass_fds: tuple[int, ...] = (),
) -> tuple[list[Result], dict[str, object]]:
    """Run (project, probe) pairs from a new supervisor process (see fresh_supervisor.py).

    It inherits this process's environment and `pass_fds`; python probe args may name
    "{ring}" and "{key}", the supervisor's session keyring and secret key.
    """
    items = []
    for project, probe in runs:
        if probe.syntax == "python":
            body, args = (PROBES_DIR / probe.body).read_text(), probe.args(world)
        else:
            body, args = script(probe.body, world), ()
        items.append({"project": project, "body": body, "syntax": probe.syntax, "args": args})
    request = {"state": str(world.state), "keyring_secret": keyring_secret, "runs": items}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.security.fresh_supervisor"],
        input=json.dumps(request),
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        pass_fds=pass_fds,
    )
    assert proc.returncode == 0, f"fresh supervisor failed: {proc.stdout}\n{proc.stderr}"
    report: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    results = [
        Result(
            Outcome(Reason(r["reason"]), r["exit_code"], r["signal"], "from a fresh supervisor"),
            r["stdout"],
            r["stderr"],
        )
        for r in report["runs"]  # type: ignore[attr-defined]
    ]
    return results, report


def describe(result: Result) -> str:
    return (
        f"outcome: {result.outcome}\n--- stdout\n{result.stdout[-6000:]}"
        f"\n--- stderr\n{result.stderr[-3000:]}\n--- debug\n{result.debug[-2000:]}"
    )


def assert_contained(world: World, result: Result) -> None:
    """The probe ran to its end, nothing forbidden succeeded, and blue's secret stayed put."""
    where = describe(result)
    print(where)  # shown by `pytest -rP`: what each probe tried and how it was refused
    escapes = [line for line in result.stdout.splitlines() if line.startswith("ESCAPE")]
    assert result.outcome.exit_code != ESCAPED, "SANDBOX ESCAPE: " + "; ".join(escapes) + where
    assert not escapes, where
    assert world.canary not in result.stdout + result.stderr + result.debug, (
        "blue's canary leaked into red's output\n" + where
    )
    assert result.outcome.reason is Reason.EXITED, where
    assert result.outcome.exit_code == 0, where
    assert "probe: start" in result.stdout and "probe: done" in result.stdout, where


def blue_untouched(world: World, _result: Result) -> None:
    assert not world.blue_alive(), world.blue_alive()
    for pid in world.blue_pids:
        assert psutil.Process(pid).uids().real == world.blue_uid


def nothing_accepted(world: World, _result: Result) -> None:
    assert not world.accepted(), world.accepted()


def blue_unchanged(world: World, _result: Result) -> None:
    names = sorted(p.name for p in world.blue_work.iterdir())
    assert names == [".octopus.bootstrap.sh", ".octopus.variables", "Script.sh", "canary.txt"]
    assert sorted(p.name for p in world.blue_home.iterdir()) == ["canary.txt"]


PROBES = [
    # --- blue's files -------------------------------------------------------------------------
    Probe(
        "read_blue_workspace_by_host_path",
        """
try_read @BLUE_WORK@/canary.txt @BLUE_WORK@/Script.sh @BLUE_HOME@/canary.txt
try_read @BLUE_WORK@/.octopus.variables
try_list @BLUE_WORK@ @BLUE_HOME@ @STATE@/projects/blue @STATE@/projects/blue/work
cd @BLUE_WORK@ 2>/dev/null && escape "cd into blue's workspace"
echo "denied: cd @BLUE_WORK@"
""",
    ),
    Probe(
        "see_blue_in_the_projects_dir",
        """
out=$(ls -la @STATE@/projects 2>&1); echo "ls projects: $out"
case "$out" in *blue*) escape "the projects directory lists blue";; esac
for d in @STATE@/projects/*/work/*; do
  case "$d" in */red/*) ;; *) [ -e "$d" ] && escape "found another run: $d";; esac
done
echo "no other project's run is visible"
""",
    ),
    Probe(
        "find_blue_canary_anywhere",
        """
found=$(find / -path /proc -prune -o -name canary.txt -print 2>/dev/null)
[ -n "$found" ] && escape "found $found"
echo "no canary.txt anywhere below / (except /proc)"
""",
    ),
    Probe(
        "read_blue_via_proc_pid_cwd",
        """
for p in $(others); do
  try_read "/proc/$p/cwd/canary.txt" "/proc/$p/cwd/Script.sh"
  try_list "/proc/$p/cwd"
done
""",
    ),
    Probe(
        "read_blue_via_proc_pid_root",
        """
for p in $(others); do
  try_read "/proc/$p/root@BLUE_WORK@/canary.txt" "/proc/$p/root/etc/hostname"
  try_list "/proc/$p/root/"
done
""",
    ),
    Probe(
        "read_blue_via_proc_pid_fd",
        """
for p in $(others); do
  try_list "/proc/$p/fd" "/proc/$p/map_files"
  for n in 0 1 2 3 4 5 6 7 8 9 10 255; do try_read "/proc/$p/fd/$n"; done
done
""",
    ),
    Probe(
        "read_blue_environment",
        """
for p in $(others); do try_read "/proc/$p/environ"; done
for d in /proc/[0-9]*; do
  if tr '\\0' '\\n' < "$d/environ" 2>/dev/null | grep -q '^CANARY='; then
    escape "found CANARY in $d/environ"
  fi
done
""",
    ),
    Probe(
        "read_init_secrets",
        """
[ "$(stat -c %u /proc/1)" = 0 ] || control_failed "pid 1 is not root-owned"
try_read /proc/1/environ /proc/1/auxv /proc/1/maps /proc/1/syscall /proc/1/stack
try_list /proc/1/fd /proc/1/cwd/ /proc/1/root/ /proc/1/map_files
""",
    ),
    Probe(
        "follow_a_planted_symlink_to_blue",
        """
mkdir links && cd links || control_failed "cannot create links/"
ln -s @BLUE_WORK@/canary.txt file
ln -s @BLUE_WORK@ dir
ln -s @BLUE_HOME@/canary.txt home
ln -s /proc/1/root init-root
n=0; for p in @BLUE_PIDS@; do n=$((n+1)); ln -s "/proc/$p/cwd" "cwd$n"; done
ls -l
try_read file home dir/canary.txt init-root@BLUE_WORK@/canary.txt
try_list dir/ init-root/
for l in cwd*; do ours "$(readlink "$l" | cut -d/ -f3)" || try_read "$l/canary.txt"; done
""",
    ),
    Probe(
        "hardlink_blue_canary_or_host_files",
        """
for target in @BLUE_WORK@/canary.txt @BLUE_HOME@/canary.txt /etc/shadow /usr/bin/su \\
              /etc/passwd @HOST_SECRET@; do
  if out=$(ln -- "$target" "./link-$(basename "$target")" 2>&1); then
    escape "hard link to $target"
  fi
  echo "denied: ln $target: $out"
done
""",
    ),
    Probe(
        "read_blue_private_tmp_and_shm",
        """
try_read /tmp/canary.txt /dev/shm/canary.txt
ls -la /tmp /dev/shm
""",
    ),
    Probe(
        "see_blue_ipc_objects",
        """
ipcs -a
for kind in shm msg sem; do
  n=$(tail -n +2 /proc/sysvipc/$kind | grep -c .)
  [ "$n" = 0 ] || escape "$n System V $kind object(s) visible"
done
ls -A /dev/mqueue 2>/dev/null && escape "/dev/mqueue is mounted"
echo "no System V or POSIX IPC object is visible"
""",
    ),
    # --- the host and the supervisor ----------------------------------------------------------
    Probe(
        "read_host_tmp",
        """
try_read @HOST_SECRET@
out=$(ls -A @BASE@ 2>&1); echo "ls base: $out"
case "$out" in *host-secret*) escape "the host's /tmp directory is visible";; esac
""",
    ),
    Probe(
        "read_supervisor_state",
        """
try_read @STATE@/accounts.json @STATE@/accounts.lock
out=$(ls -A @STATE@ 2>&1); echo "ls state: $out"
case "$out" in *accounts*) escape "the state directory is visible";; esac
""",
    ),
    Probe(
        "read_host_secrets_in_etc",
        """
try_read /etc/shadow /etc/gshadow /etc/ssl/private/ssl-cert-snakeoil.key
try_list /etc/ssl/private
""",
    ),
    Probe(
        "see_host_only_directories",
        """
ls -la /
for d in /root /home /var /run /sys /boot /srv /mnt /media /opt /work /lost+found /.oldroot \\
         /sys/fs/cgroup /dev/mqueue; do
  [ -e "$d" ] && escape "$d exists in the sandbox"
done
echo "none of the host-only directories exists"
""",
    ),
    Probe(
        "reach_block_or_kernel_devices",
        """
ls -la /dev
found=$(find /dev -type b 2>/dev/null); [ -n "$found" ] && escape "block devices: $found"
for d in mem kmem port kmsg console tty tty0 tty1 vda sda loop0 loop-control fuse net/tun \\
         kvm; do
  [ -e "/dev/$d" ] && escape "/dev/$d exists"
done
if out=$(mknod ./vda b 254 0 2>&1); then escape "mknod of a block device worked"; fi
echo "denied: mknod: $out"
if out=$(mknod ./mem c 1 1 2>&1); then escape "mknod of /dev/mem worked"; fi
echo "denied: mknod: $out"
""",
    ),
    # --- processes ----------------------------------------------------------------------------
    Probe(
        "see_blue_processes",
        """
ps -eo pid,uid,euid,stat,args
for d in /proc/[0-9]*; do
  p=${d#/proc/}; owner=$(stat -c %u "$d" 2>/dev/null) || continue
  [ "$p" = 1 ] && [ "$owner" = 0 ] && continue
  [ "$owner" = "$me" ] || escape "pid $p (uid $owner) is visible"
done
for p in @BLUE_PIDS@; do
  [ "$(stat -c %u "/proc/$p" 2>/dev/null)" = @BLUE_UID@ ] && escape "blue's pid $p is visible"
done
echo "only red's processes and its own init are visible"
""",
    ),
    Probe(
        "signal_blue_processes",
        """
for p in $(others); do
  [ "$p" = 1 ] && continue  # init has its own probe
  for sig in 0 STOP KILL; do
    if out=$(kill -s "$sig" "$p" 2>&1); then escape "kill -$sig $p"; fi
    echo "denied: kill -$sig $p: $out"
  done
done
""",
        check=blue_untouched,
    ),
    Probe(
        "signal_init",
        """
for sig in 0 STOP CONT; do
  if out=$(kill -s "$sig" 1 2>&1); then escape "kill -$sig 1"; fi
  echo "denied: kill -$sig 1: $out"
done
""",
    ),
    Probe(
        "trace_other_processes",
        "ptrace.py",
        syntax="python",
        args=lambda w: tuple(map(str, w.blue_pids)),
        check=blue_untouched,
    ),
    # --- writing outside the workspace --------------------------------------------------------
    Probe(
        "write_outside_its_workspace",
        """
: >> "$HOME/probe-ok" && : >> ./probe-ok && : >> /tmp/probe-ok || control_failed "own dirs"
echo "control: HOME, cwd and the private /tmp are writable"
try_write /etc/sw-escape /usr/sw-escape /usr/bin/sw-escape /bin/sw-escape /sw-escape \\
          /var/tmp/sw-escape /proc/sw-escape /dev/sw-escape /etc/passwd /etc/hostname \\
          /usr/bin/bash /proc/sys/kernel/hostname /proc/sys/vm/drop_caches /proc/1/oom_score_adj
for d in /var/tmp /etc/sw-escape-dir /usr/sw-escape-dir /sw-escape-dir; do
  if out=$(mkdir -p "$d" 2>&1); then escape "mkdir $d"; fi
  echo "denied: mkdir $d: $out"
done
""",
    ),
    Probe(
        "write_into_blue_workspace",
        """
try_write @BLUE_WORK@/pwned @BLUE_HOME@/pwned @BLUE_HOME@/.bashrc @BLUE_WORK@/canary.txt \\
          @STATE@/projects/blue/pwned @STATE@/accounts.json
if out=$(mkdir -p @STATE@/projects/blue/work/pwned 2>&1); then escape "mkdir in blue"; fi
echo "denied: mkdir in blue: $out"
""",
        check=blue_unchanged,
    ),
    # --- privileges ---------------------------------------------------------------------------
    Probe(
        "keep_capabilities_or_root_ids",
        "status.py",
        syntax="python",
        args=lambda w: (str(w.red_uid),),
    ),
    Probe(
        "become_root_or_blue_with_set_id_calls",
        "setuid_calls.py",
        syntax="python",
        args=lambda w: (str(w.blue_uid),),
    ),
    Probe(
        "gain_root_through_setuid_binaries",
        """
grep NoNewPrivs /proc/self/status | grep -q 1 || escape "no_new_privs is not set"
# su waits for a password on its pipe: while it waits, look at its credentials
(sleep 3 | su -c id root) & (sleep 3 | newgrp root) & (sleep 3 | passwd) &
(sleep 3 | chsh -s /bin/sh) & (sleep 3 | gpasswd -a nobody root) &
sleep 1
pgrep -x su >/dev/null || control_failed "su is not waiting for its password"
ps -eo pid,uid,euid,suid,args
for s in /proc/[0-9]*/status; do
  p=$(dirname "$s"); p=${p#/proc/}; [ "$p" = 1 ] && continue
  if awk '/^(Uid|Gid):/ { for (i = 2; i <= 5; i++) if ($i == 0) bad = 1 } END { exit !bad }' \\
       "$s" 2>/dev/null; then
    escape "pid $p runs with a root id: $(grep -E '^(Uid|Gid|Name):' "$s" | tr '\\n' ' ')"
  fi
done
echo "no process besides init has a root id"
out=$(su -c id root </dev/null 2>&1); echo "su: $out"
case "$out" in *"uid=0"*) escape "su gave root";; esac
mkdir -p probe-mnt
if out=$(mount -t tmpfs none ./probe-mnt 2>&1); then escape "mount worked"; fi
echo "denied: mount: $out"
if out=$(umount /proc 2>&1); then escape "umount /proc worked"; fi
echo "denied: umount: $out"
wait
""",
    ),
    Probe(
        "exceed_or_raise_its_rlimits",
        "rlimits.py",
        syntax="python",
        args=lambda w: (
            str(LIMITS.cpu_seconds),
            str(LIMITS.open_files),
            str(LIMITS.file_size_bytes),
            str(LIMITS.processes * 4),
        ),
    ),
    Probe(
        "raise_its_scheduling_priority",
        """
grep -E 'Max (nice|realtime) priority' /proc/self/limits
awk '/Max (nice|realtime) priority/ && ($4 != 0 || $5 != 0) { exit 1 }' /proc/self/limits \\
  || escape "RLIMIT_NICE or RLIMIT_RTPRIO lets the script raise its priority"
for cmd in "chrt -f 1 true" "chrt -r 1 true" "renice -n -1 -p $$" "ionice -c 1 true"; do
  if out=$($cmd 2>&1); then escape "$cmd: $out"; fi
  echo "denied: $cmd: $out"
done
n=$(nice -n -5 nice 2>/dev/null)
[ "$n" -lt 0 ] && escape "niceness $n"
echo "denied: niceness stays $n"
""",
    ),
    Probe(
        "dodge_the_oom_killer",
        """
adj=$(cat /proc/self/oom_score_adj)
echo "oom_score_adj: $adj"
[ "$adj" -lt 0 ] && escape "the script inherited OOM protection ($adj)"
if out=$( (echo -1000 > /proc/self/oom_score_adj) 2>&1 ); then escape "set oom_score_adj -1000"; fi
echo "denied: oom_score_adj -1000: $out"
""",
    ),
    Probe("observe_the_machine_with_perf_or_bpf", "perf_bpf.py", syntax="python"),
    # --- user namespaces and cgroups ----------------------------------------------------------
    Probe(
        "gain_power_in_a_user_namespace",
        "userns.py",
        syntax="python",
        args=lambda w: (str(w.blue_work), str(w.red_uid)),
    ),
    Probe(
        "mount_through_unshare",
        """
for cmd in "cat @BLUE_WORK@/canary.txt" "cat /etc/shadow" "mount -t tmpfs none /tmp" \\
           "mount -t cgroup -o rdma cgroup /tmp" "mount -t cgroup2 none /tmp"; do
  for flags in -Ur -Urm -UrmC -Umc; do
    if out=$(unshare $flags sh -c "$cmd" 2>&1); then
      escape "unshare $flags $cmd: $out"
    fi
    echo "denied: unshare $flags $cmd: $out"
  done
done
""",
    ),
    Probe("set_a_cgroup_release_agent", "cgroup_release_agent.py", syntax="python"),
    Probe("open_host_files_by_handle", "handles.py", syntax="python"),
    # --- terminal, network --------------------------------------------------------------------
    Probe("inject_terminal_input", "tiocsti.py", syntax="python"),
    Probe(
        "connect_to_host_loopback_tcp",
        "tcp_connect.py",
        syntax="python",
        args=lambda w: (str(w.tcp_port),),
        check=nothing_accepted,
    ),
    Probe(
        "see_network_interfaces_besides_loopback",
        """
cat /proc/net/dev
ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' ')
[ "$ifaces" = "lo " ] || escape "interfaces besides lo: $ifaces"
routes=$(tail -n +2 /proc/net/route | grep -c .)
[ "$routes" = 0 ] || escape "$routes IPv4 route(s)"
exec 3<>/dev/tcp/1.1.1.1/53 2>/dev/null && escape "reached 1.1.1.1:53"
echo "only lo, no routes, no outside connection"
""",
    ),
    Probe(
        "connect_to_host_abstract_socket",
        "abstract_connect.py",
        syntax="python",
        args=lambda w: (w.abstract_name,),
        check=nothing_accepted,
    ),
    Probe(
        "connect_to_host_abstract_socket_with_host_network",
        "abstract_connect.py",
        syntax="python",
        args=lambda w: (w.abstract_name,),
        policy={"network": "host"},
        check=nothing_accepted,
    ),
    # --- descriptors and environment ----------------------------------------------------------
    Probe("inherit_descriptors", "descriptors.py", syntax="python"),
    Probe(
        "inherit_descriptors_in_bash",
        """
# ls runs as a child with its output in a file, so bash itself opens nothing while it looks
ls -l /proc/$$/fd > /tmp/fds
cat /tmp/fds
extra=$(awk '$9 != "" && $9 !~ /^(0|1|2|255)$/ { print $9, $10, $11 }' /tmp/fds)
[ -z "$extra" ] || escape "bash holds descriptors: $extra"
# (bash keeps the file it runs open as 255: the helpers' bootstrap, which sources the script)
[ "$(readlink /proc/$$/fd/255)" = "$PWD/.octopus.bootstrap.sh" ] || escape "fd 255 is not ours"
""",
    ),
]


@pytest.mark.parametrize("probe", PROBES, ids=[p.id for p in PROBES])
def test_red_cannot(world: World, probe: Probe) -> None:
    result = run_probe(world, probe)
    assert_contained(world, result)
    if probe.check is not None:
        probe.check(world, result)


# --- bespoke probes ---------------------------------------------------------------------------


def test_red_cannot_write_into_the_host_tmp_or_shm(world: World) -> None:
    name = "sandworker-escape-" + secrets.token_hex(8)
    host_files = [Path("/tmp") / name, Path("/dev/shm") / name]
    body = f"""
for f in /tmp/{name} /dev/shm/{name}; do
  echo red-was-here > "$f" || control_failed "write $f (the private one must be writable)"
  echo "wrote $f in red's own view"
done
"""
    try:
        result = run_probe(world, Probe("write_host_tmp", body))
        assert_contained(world, result)
        leaked = [str(f) for f in host_files if f.exists()]
        assert not leaked, f"SANDBOX ESCAPE: red created {leaked} on the host"
    finally:
        for f in host_files:
            f.unlink(missing_ok=True)


def test_red_cannot_read_hidden_system_directories(world: World) -> None:
    """A directory listed in the settings' `hidden` is empty and unreadable, not just unlisted."""
    secret = "/etc/apt/sources.list.d/debian.sources"
    assert Path(secret).exists(), "host lacks the bait file"
    body = f"""
try_read {secret}
try_list /etc/apt /etc/apt/sources.list.d
"""
    control = run_probe(world, Probe("control", f"head -c 40 {secret} >/dev/null || exit 3"))
    assert control.outcome.exit_code == 0, describe(control)
    settings = SandboxSettings(state_dir=world.state, hidden=("/etc/apt",))
    hiding = Sandbox(settings, host=world.sandbox.host)
    assert_contained(world, run_probe(world, Probe("hidden", body), sandbox=hiding))


INJECTION_MARKER = "INJECTED"


@pytest.fixture
def hostile_environment(world: World, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Put a secret and code-injection variables into the supervisor's own environment.

    The test process's environment gets them, and so does the fresh supervisor each test
    starts (its launcher inherits what the supervisor had when it started). The files they
    point at live in red's HOME (readable by red) and print INJECTION_MARKER when they take
    effect.
    """
    where = world.red_home / ("inject-" + secrets.token_hex(4))
    where.mkdir()
    (where / "pyinject").mkdir()
    files = {
        "bash_env": f"echo {INJECTION_MARKER}-bash-env\n",
        "pyinject/sitecustomize.py": f"print('{INJECTION_MARKER}-pythonpath')\n",
        "startup.py": f"print('{INJECTION_MARKER}-pythonstartup')\n",
        f"{INJECTION_MARKER}-preload.so": "not an ELF file: ld.so names it when it tries\n",
    }
    for name, text in files.items():
        (where / name).write_text(text)
    for path in (where, where / "pyinject", *(where / name for name in files)):
        path.chmod(0o755)
    env = {
        "SANDWORKER_TEST_SECRET": world.canary,
        "LD_PRELOAD": str(where / f"{INJECTION_MARKER}-preload.so"),
        "LD_LIBRARY_PATH": str(where),
        "BASH_ENV": str(where / "bash_env"),
        "ENV": str(where / "bash_env"),
        "SHELLOPTS": "xtrace",
        "PS4": f"+{INJECTION_MARKER}-ps4 ",
        "PYTHONPATH": str(where / "pyinject"),
        "PYTHONSTARTUP": str(where / "startup.py"),
        "PYTHONINSPECT": "1",
        "PATH": f"{where}:/usr/bin:/bin",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return {"dir": str(where), **env}


def contained_under_hostile_supervisor(
    world: World, hostile_environment: dict[str, str], probe: Probe
) -> None:
    """Run `probe` as red under a fresh supervisor carrying the hostile environment."""
    (result,), report = fresh_supervisor(world, [("red", probe)])
    assert set(hostile_environment) - {"dir"} <= set(report["environ_names"])  # type: ignore[arg-type]
    assert_contained(world, result)
    assert INJECTION_MARKER not in result.stdout + result.stderr, describe(result)


def test_red_cannot_see_the_supervisor_environment(
    world: World, hostile_environment: dict[str, str]
) -> None:
    probe = Probe(
        "environment", "environment.py", syntax="python", args=lambda w: (str(w.red_home),)
    )
    contained_under_hostile_supervisor(world, hostile_environment, probe)


def test_red_cannot_be_injected_through_the_supervisor_environment(
    world: World, hostile_environment: dict[str, str]
) -> None:
    """LD_PRELOAD, BASH_ENV, SHELLOPTS/PS4 and PYTHON* in the supervisor do nothing in bash."""
    where = hostile_environment["dir"]
    body = f"""
# controls: the bait works when a script sets it itself (output captured, not printed)
out=$(BASH_ENV={where}/bash_env bash -c true)
[ -n "$out" ] || control_failed "BASH_ENV bait"
out=$(PYTHONPATH={where}/pyinject python3 -c pass)
[ -n "$out" ] || control_failed "PYTHONPATH bait"
out=$(LD_PRELOAD={where}/{INJECTION_MARKER}-preload.so /bin/true 2>&1)
[ -n "$out" ] || control_failed "LD_PRELOAD bait"
echo "controls: the bait files work"
bash -c true
python3 -c pass
sh -c true
for v in SANDWORKER_TEST_SECRET LD_PRELOAD LD_LIBRARY_PATH BASH_ENV ENV SHELLOPTS PS4 \\
         PYTHONPATH PYTHONSTARTUP PYTHONINSPECT; do
  printenv "$v" >/dev/null && escape "$v reached the script's environment"
done
case "$PATH" in *inject*) escape "the supervisor's PATH reached the script";; esac
"""
    contained_under_hostile_supervisor(world, hostile_environment, Probe("injection", body))


def test_red_cannot_be_injected_into_python_scripts(
    world: World, hostile_environment: dict[str, str]
) -> None:
    (result,), _ = fresh_supervisor(world, [("red", Probe("plain", "plain.py", syntax="python"))])
    assert result.outcome.reason is Reason.EXITED and result.outcome.exit_code == 0, describe(
        result
    )
    assert result.stdout == "python ran\n", describe(result)  # no sitecustomize, no >>>
    assert result.stderr == "", describe(result)
    assert INJECTION_MARKER not in result.stdout + result.stderr, describe(result)


def test_red_cannot_inherit_supervisor_descriptors(
    world: World, inheritable_fds: list[int]
) -> None:
    """Even descriptors the supervisor forgot to mark close-on-exec stay out of the script."""
    probe = Probe("descriptors", "descriptors.py", syntax="python")
    (result,), report = fresh_supervisor(world, [("red", probe)], pass_fds=tuple(inheritable_fds))
    assert set(inheritable_fds) <= set(report["open_fds"])  # type: ignore[arg-type]
    assert_contained(world, result)
    assert str(world.host_secret) not in result.stdout, describe(result)


def test_red_cannot_reach_keys_through_the_supervisor_session_keyring(world: World) -> None:
    """A supervisor with a session keyring (systemd's default KeyringMode=private, a root login
    with pam_keyinit) must not hand it down: whoever holds a keyring can read its keys and add
    keys to it, so red could read what blue or the supervisor keep there. Keyrings are not
    files; Landlock and the namespaces do not cover them.
    """
    secret = "sw-supervisor-" + secrets.token_hex(12)
    plant = Probe(
        "plant", "keyring.py", syntax="python", args=lambda w: ("plant", "blue-canary", w.canary)
    )
    look = Probe(
        "look",
        "keyring.py",
        syntax="python",
        args=lambda _w: ("probe", "{ring}", "{key}", "sandworker-supervisor-secret", "blue-canary"),
    )
    (blue, red), report = fresh_supervisor(
        world, [("blue", plant), ("red", look)], keyring_secret=secret
    )
    assert blue.outcome.exit_code == 0 and "planted key" in blue.stdout, describe(blue)
    assert_contained(world, red)
    assert secret not in red.stdout + red.stderr, describe(red)
    added = sorted(set(report["keys_after"]) - {report["key"]})  # type: ignore[call-overload]
    assert not added, f"SANDBOX ESCAPE: scripts added keys {added} to the supervisor's keyring"


# --- leftovers --------------------------------------------------------------------------------

ESCAPEES = {
    "background": "sleep 600 &",
    "setsid": "setsid sleep 600 &",
    "setsid_fork": "setsid -f sleep 600",
    "double_fork": "( ( sleep 600 & ) & )",
    "nohup": "nohup sleep 600 >/dev/null 2>&1 &",
    "disowned": "sleep 600 & disown",
    "ignores_term_and_hup": "( trap '' TERM HUP INT; exec sleep 600 ) &",
    "stopped": "( kill -STOP $BASHPID; exec sleep 600 ) &",
    "daemonized_python": (
        "python3 -c 'import os,time\n"
        "if os.fork(): os._exit(0)\n"
        "os.setsid()\n"
        "if os.fork(): os._exit(0)\n"
        "os.closerange(0, 3); time.sleep(600)'"
    ),
    "nested_pid_namespace": (
        "python3 -c 'import ctypes,os,time\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.unshare(0x10000000 | 0x20000000)\n"
        "os.fork() or time.sleep(600)' &"
    ),
    "busy_loop": "( while :; do :; done ) &",
}


# counts processes with a glob in the shell itself: no fork, so the count is exact
COUNT = "count() { local p=(/proc/[0-9]*); n=${#p[@]}; }\ncount; before=$n\n"
ESCAPEE_CONTROL = """
sleep 0.5
count; after=$n
echo "processes: $before before, $after after starting the escapee"
ps -eo pid,ppid,stat,args
[ "$after" -gt "$before" ] || control_failed "the escapee is not running"
"""


@pytest.mark.parametrize("how", list(ESCAPEES))
def test_red_leaves_no_process_after_exit(world: World, how: str) -> None:
    body = COUNT + ESCAPEES[how] + "\n" + ESCAPEE_CONTROL
    result = run_probe(world, Probe(how, body))
    assert_contained(world, result)
    left = wait_gone(world.red_uid, 2.0)  # killed processes may take a moment to finish exiting
    assert not left, f"{how}: {[(p.pid, p.name(), p.status()) for p in left]}"


ALL_ESCAPEES = "\n".join(ESCAPEES.values())


def test_red_leaves_no_process_after_timeout(world: World) -> None:
    body = ALL_ESCAPEES + "\ntrap '' TERM HUP INT\necho READY\nwhile :; do sleep 0.2; done\n"
    started = time.monotonic()
    result = run_probe(world, Probe("timeout", body, policy={"timeout_seconds": 2}))
    assert result.outcome.reason is Reason.TIMEOUT, describe(result)
    assert "READY" in result.stdout, describe(result)
    assert time.monotonic() - started < 15, describe(result)
    assert not wait_gone(world.red_uid, 2.0)


def test_red_leaves_no_process_after_cancel(world: World) -> None:
    body = ALL_ESCAPEES + "\ntrap '' TERM HUP INT\necho READY\nwhile :; do sleep 0.2; done\n"
    cancel = threading.Event()
    timer = threading.Timer(1.5, cancel.set)
    timer.start()
    try:
        result = run(world.sandbox, "red", script(body, world), cancel=cancel)
    finally:
        timer.cancel()
    assert result.outcome.reason is Reason.CANCELLED, describe(result)
    assert "READY" in result.stdout, describe(result)
    assert not wait_gone(world.red_uid, 2.0)


# --- bombs (bounded) --------------------------------------------------------------------------


def test_red_cannot_fork_bomb_the_host(world: World) -> None:
    """The classic bomb: the process limit holds it, and the timeout ends it."""
    # every node waits for its two children; the depth cap bounds it to ~6000 processes ever
    body = (
        "exec 2>/dev/null\n"
        'b() { if [ "$1" -lt 11 ]; then b $(($1 + 1)) | b $(($1 + 1)) & wait; else sleep 3; fi; }\n'
        "b 0\n"
    )
    policy = {"limits": {"processes": 64}, "timeout_seconds": 6}
    started = time.monotonic()
    result = run_probe(world, Probe("fork_bomb", body, policy=policy))
    elapsed = time.monotonic() - started
    assert result.outcome.reason in (Reason.EXITED, Reason.TIMEOUT), describe(result)
    assert result.outcome.limit_hits.get("processes", 0) > 0, describe(result)
    assert elapsed < 20, f"the bomb ran for {elapsed:.1f}s\n" + describe(result)
    assert world.canary not in result.stdout + result.stderr


def test_red_cannot_fork_past_the_process_limit(world: World) -> None:
    probe = Probe(
        "fork_count",
        "fork_count.py",
        syntax="python",
        args=lambda _w: ("32",),
        policy={"limits": {"processes": 32}},
    )
    result = run_probe(world, probe)
    assert_contained(world, result)
    assert result.outcome.limit_hits.get("processes", 0) > 0, describe(result)


def test_red_cannot_exceed_the_memory_limit(world: World) -> None:
    probe = Probe(
        "memory_bomb",
        "memory_bomb.py",
        syntax="python",
        policy={"limits": {"memory_bytes": 96 << 20}},
    )
    result = run_probe(world, probe)
    assert result.outcome.exit_code != ESCAPED, "SANDBOX ESCAPE\n" + describe(result)
    assert "ESCAPE" not in result.stdout, describe(result)
    assert "probe: start" in result.stdout, describe(result)
    assert "allocated 128 MiB" not in result.stdout, describe(result)
    assert result.outcome.limit_hits.get("memory", 0) > 0, describe(result)
    assert result.outcome.reason in (Reason.MEMORY, Reason.EXITED), describe(result)


def test_memory_kill_is_reported_as_memory(world: World) -> None:
    """The supervisor must say why the script died: SIGKILL by the memory limit."""
    probe = Probe(
        "memory_bomb",
        "memory_bomb.py",
        syntax="python",
        policy={"limits": {"memory_bytes": 96 << 20}},
    )
    result = run_probe(world, probe)
    assert result.outcome.reason is Reason.MEMORY, describe(result)
    assert result.outcome.signal == "SIGKILL", describe(result)


def test_red_cannot_exceed_the_memory_limit_in_a_child(world: World) -> None:
    body = f"""
python3 - <<'PY'
{(PROBES_DIR / "memory_bomb.py").read_text()}
PY
rc=$?
echo "the bomb ended with $rc"
[ $rc = 77 ] && escape "the child allocated 1 GiB"
[ $rc = 137 ] || control_failed "expected the child to be SIGKILLed, got $rc"
"""
    result = run_probe(
        world, Probe("memory_child", body, policy={"limits": {"memory_bytes": 96 << 20}})
    )
    assert_contained(world, result)
    assert result.outcome.limit_hits.get("memory", 0) > 0, describe(result)


def test_red_cannot_write_files_past_the_size_limit(world: World) -> None:
    limit = 1 << 20
    body = f"""
dd if=/dev/zero of=big bs=64k count=64 2>&1; echo "dd: $?"
head -c 2M /dev/zero > big2; echo "head: $?"
python3 -c 'import signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
with open("big3", "wb") as f:
    try: f.write(bytes(2 << 20)); f.flush()
    except OSError as e: print("python:", e)'
for f in big big2 big3 /tmp/big4; do
  [ "$f" = /tmp/big4 ] && head -c 3M /dev/zero > /tmp/big4
  size=$(stat -c %s "$f" 2>/dev/null || echo 0)
  echo "$f: $size bytes"
  [ "$size" -gt {limit} ] && escape "$f grew to $size bytes past the {limit}-byte limit"
done
[ "$(stat -c %s big)" = {limit} ] || control_failed "dd did not write up to the limit"
"""
    policy = {"limits": {"file_size_bytes": limit}}
    assert_contained(world, run_probe(world, Probe("file_size", body, policy=policy)))


def test_red_cannot_fill_tmp_or_shm_past_tmp_bytes(world: World) -> None:
    tmp = 4 << 20
    body = f"""
for d in /tmp /dev/shm; do
  size=$(df -B1 --output=size "$d" | tail -1 | tr -d ' ')
  echo "$d: size $size"
  [ "$size" -gt {tmp} ] && escape "$d is $size bytes, more than tmp_bytes {tmp}"
  out=$(dd if=/dev/zero of="$d/fill" bs=1M count=16 2>&1); rc=$?
  echo "dd into $d: $rc $out"
  [ $rc = 0 ] && escape "wrote 16 MiB into $d"
  case "$out" in *"No space left"*) ;; *) control_failed "expected ENOSPC in $d";; esac
  for i in 1 2 3 4 5 6 7 8; do head -c 1M /dev/zero > "$d/more$i" 2>/dev/null; done
  used=$(cat "$d"/fill "$d"/more* | wc -c)
  echo "$d: $used bytes used"
  [ "$used" -gt {tmp} ] && escape "$d holds $used bytes"
  rm -f "$d"/fill "$d"/more*
done
"""
    policy = {"limits": {"tmp_bytes": tmp, "file_size_bytes": 64 << 20}}
    assert_contained(world, run_probe(world, Probe("tmp_bytes", body, policy=policy)))


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_red_cannot_flood_the_output(world: World, stream: str) -> None:
    limit = 64 << 10
    body = "yes sandworker-flood" + (" >&2" if stream == "stderr" else "") + "\n"
    started = time.monotonic()
    result = run_probe(world, Probe("flood", body, policy={"limits": {"output_bytes": limit}}))
    assert result.outcome.reason is Reason.OUTPUT, describe(result)
    sent = sum(len(data) for source, data in result.chunks if source in ("stdout", "stderr"))
    assert sent <= limit, f"{sent} bytes passed an output limit of {limit}"
    assert sent > limit // 2, f"only {sent} bytes arrived: was the flood cut too early?"
    assert time.monotonic() - started < 15


def test_red_cannot_use_more_cpu_time_than_allowed(world: World) -> None:
    body = "while :; do :; done\n"
    policy = {"limits": {"cpu_seconds": 1}, "timeout_seconds": 30}
    started = time.monotonic()
    result = run_probe(world, Probe("cpu", body, policy=policy))
    assert result.outcome.reason is Reason.CPU, describe(result)
    assert time.monotonic() - started < 15, describe(result)


def test_blue_survived_every_probe(world: World) -> None:
    """Runs last in this module: blue's processes, files and secret are as blue left them."""
    assert not world.blue_alive(), world.blue_alive()
    assert (world.blue_work / "canary.txt").read_text().strip() == world.canary
    blue_unchanged(world, None)  # type: ignore[arg-type]
    assert world.host_secret.read_text().strip() == world.canary
