"""The launcher: a single-threaded helper that confines a fresh process, then execs.

The supervisor is multi-threaded, so it never forks itself to set up a script.
It starts ``<python> -I -S forkserver.py`` once (absolute interpreter, isolated
mode, no site-packages) as a *zygote*, which imports this file and
forks one child per script. Each child gets its descriptors in place (0 null,
1 and 2 the output pipes, 4 a close-on-exec status pipe, 5 and 6 the
workspace directories, 7 the "go" pipe), then applies, in this order
(layers.py names them):

1. session and descriptors: a new session (no controlling terminal), every
   other descriptor closed;
2. namespaces: mount, pid, ipc, uts and (network = none) net; as non-root a
   user namespace first, mapping only our own uid. In the new mount
   namespace it pivots into a new root on a tmpfs holding only read-only
   system directories, private /tmp, /dev/shm and /dev, and the run's own
   workspace (checked to be the very directories the supervisor created);
3. cgroups: it waits for the supervisor to move it into the run's cgroups
   (a byte on descriptor 7), so every process of the run starts inside them;
   fork: the child is pid 1 of the new pid namespace (``init``). It mounts
   /proc, detaches the host's root, seals its own read-only, sets the
   hostname and brings up loopback;
4. init forks the script process, then keeps only CAP_KILL, sets
   no_new_privs, locks itself out of every file with Landlock and waits. When
   the script's main process ends, init exits and the kernel kills whatever
   is left in the namespace;
5. the script process sets rlimits, empties the capability bounding set,
   clears supplementary groups, sets and verifies its gid and uid, joins a
   fresh session keyring, sets no_new_privs, applies Landlock (filesystem rules plus signal and
   abstract-socket scopes), resets signal dispositions, changes into its
   working directory and execs the interpreter by absolute path with the
   clean environment.

A failure anywhere before exec writes one JSON line ``{"layer", "error"}`` to
descriptor 4 and exits 127. EOF on descriptor 4 without a line means exec
succeeded. The child exits the way the script did (same code, or killed by
the same signal), and the zygote reports that raw status to the supervisor.
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
import select
import signal
import socket
import struct
import sys

if __package__:
    from . import kernel, landlock
    from .spec import LaunchSpec, Mounts
else:  # run by path with -I -S: no site-packages, so load the siblings directly
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import kernel  # type: ignore[no-redef,import-not-found]
    import landlock  # type: ignore[no-redef,import-not-found]
    from spec import LaunchSpec, Mounts  # type: ignore[no-redef,import-not-found]

STATUS_FD = 4
GO_FD = 7  # one byte on it: the supervisor has put us in our cgroups
CAP_KILL = 5
_layer = "launcher"


# The root this process builds (directories 0755) and the script itself get this umask, not
# the supervisor's: under systemd that is UMask=0077, which would leave the private root
# untraversable by the project's account. Scripts start with 022, as a login shell does.
SCRIPT_UMASK = 0o022


def fail(message: str) -> None:
    """Report a setup failure on the status pipe and leave without cleanup handlers."""
    try:
        os.write(STATUS_FD, (json.dumps({"layer": _layer, "error": message}) + "\n").encode())
    finally:
        os._exit(127)


def step(name: str) -> None:
    global _layer  # noqa: PLW0603 - one process, one current step, used by fail()
    _layer = name


def enter_namespaces(spec: LaunchSpec) -> None:
    names = set(spec["namespaces"])
    flags = {
        "mount": kernel.CLONE_NEWNS,
        "pid": kernel.CLONE_NEWPID,
        "ipc": kernel.CLONE_NEWIPC,
        "uts": kernel.CLONE_NEWUTS,
        "network": kernel.CLONE_NEWNET,
    }
    mask = 0
    for name, flag in flags.items():
        if name in names:
            mask |= flag
    if spec["userns"]:
        uid, gid = os.getuid(), os.getgid()
        kernel.unshare(kernel.CLONE_NEWUSER | mask)
        for path, text in (
            ("/proc/self/setgroups", "deny"),
            ("/proc/self/uid_map", f"{uid} {uid} 1"),
            ("/proc/self/gid_map", f"{gid} {gid} 1"),
        ):
            with open(path, "w") as f:
                f.write(text)
    elif mask:
        kernel.unshare(mask)


def _mkdirs(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)


OLD = "/.oldroot"  # where the host's root stays reachable while the new one is built


def _bind(src: str, *, writable: bool, fds: dict[str, int]) -> None:
    """Bind host path `src` at the same path in the new root.

    For the workspace the supervisor passed a descriptor it opened safely. The
    descriptor belongs to its mount namespace, so it cannot be bound directly;
    the path is re-opened here without following a final symlink and must be
    the very same directory, or setup fails.
    """
    host = OLD + src
    if src in fds:
        fd = os.open(host, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        now, then = os.fstat(fd), os.fstat(fds[src])
        if (now.st_dev, now.st_ino) != (then.st_dev, then.st_ino):
            raise OSError(f"{src} was replaced after the supervisor created it; refusing")
        host = f"{OLD}/proc/self/fd/{fd}"  # the host /proc: ours is mounted later, by init
    elif os.path.islink(host):  # e.g. /lib -> usr/lib on merged-/usr hosts
        _mkdirs(os.path.dirname(src))
        os.symlink(os.readlink(host), src)
        return
    if os.path.isdir(host):
        _mkdirs(src)
    else:
        _mkdirs(os.path.dirname(src))
        if not os.path.exists(src):
            os.close(os.open(src, os.O_CREAT | os.O_WRONLY, 0o644))
    kernel.mount(host, src, None, kernel.MS_BIND | kernel.MS_REC, None)
    kernel.restrict_mount_recursive(src, readonly=not writable)
    if src in fds:
        os.close(int(host.rsplit("/", 1)[1]))


def _tmpfs(target: str, size: int, mode: str, *, noexec: bool = False) -> None:
    _mkdirs(target)
    flags = kernel.MS_NOSUID | kernel.MS_NODEV | (kernel.MS_NOEXEC if noexec else 0)
    kernel.mount("tmpfs", target, "tmpfs", flags, f"size={size},mode={mode}")


def build_root(mounts: Mounts, fds: dict[str, int]) -> None:
    """Pivot into an empty tmpfs, bring in only what the policy grants, drop the host root."""
    base = "/tmp"  # noqa: S108 - mounted over in our private namespace; the host's is untouched
    kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE, None)
    kernel.mount("tmpfs", base, "tmpfs", kernel.MS_NOSUID | kernel.MS_NODEV, "mode=0755")
    os.mkdir(base + OLD)
    kernel.pivot_root(base, base + OLD)
    os.chdir("/")
    for src in mounts["read_only"]:
        if os.path.lexists(OLD + src):
            _bind(src, writable=False, fds=fds)
    for hidden in mounts["hide"]:
        if os.path.isdir(hidden):
            kernel.mount("tmpfs", hidden, "tmpfs", kernel.MS_RDONLY, "size=4k,mode=0000")
    size = mounts["tmp_bytes"]
    _tmpfs("/tmp", size, "1777")  # noqa: S108 - the private /tmp
    _tmpfs("/dev", 65536, "0755", noexec=True)
    for dev in ("null", "zero", "full", "random", "urandom"):
        os.close(os.open(f"/dev/{dev}", os.O_CREAT | os.O_WRONLY, 0o666))
        kernel.mount(f"{OLD}/dev/{dev}", f"/dev/{dev}", None, kernel.MS_BIND, None)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"/dev/{name}")
    _tmpfs("/dev/shm", size, "1777", noexec=True)  # noqa: S108 - private
    _mkdirs("/proc")
    for src in mounts["read_write"]:  # last, so no tmpfs above can cover them
        _bind(src, writable=True, fds=fds)


def finish_root() -> None:
    """Mount /proc from inside the new pid namespace (so it shows only ours), drop the host's
    root, seal ours read-only. In a user namespace the kernel only allows a new proc while a
    full one is still visible, hence the host root is detached only now."""
    flags = kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC
    kernel.mount("proc", "/proc", "proc", flags, None)
    kernel.umount2(OLD, kernel.MNT_DETACH)
    os.rmdir(OLD)
    kernel.mount(None, "/", None, kernel.MS_REMOUNT | kernel.MS_BIND | kernel.MS_RDONLY, None)


def loopback_up() -> None:
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, siocgifflags, req))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14s", b"lo", flags | iff_up, b""))


def set_rlimits(limits: dict[str, list[int]]) -> None:
    for name, (soft, hard) in limits.items():
        resource.setrlimit(getattr(resource, name), (soft, hard))


def drop_privileges(uid: int, gid: int) -> None:
    for fd in (1, 2):  # our output pipes, so that /dev/stdout and /dev/stderr can be reopened
        os.fchown(fd, uid, gid)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        fail(f"credentials not as requested after the drop: {os.getresuid()} {os.getresgid()}")


def exec_script(spec: LaunchSpec) -> None:
    """The script process: limits, credentials, Landlock, then exec. Never returns."""
    step("rlimits")
    set_rlimits(spec["rlimits"])
    account = spec["account"]
    if account is not None:
        step("account")
        kernel.drop_bounding_set()
        drop_privileges(account[0], account[1])
    step("keyring")
    kernel.new_session_keyring()  # after the drop, so the new keyring is the account's own
    step("no_new_privs")
    kernel.prctl(kernel.PR_SET_NO_NEW_PRIVS, 1)
    rules = spec["landlock"]
    if rules is not None:
        step("landlock")
        fds = spec["fds"]
        writable = [f"/proc/self/fd/{fds[p]}" if p in fds else p for p in rules["read_write"]]
        landlock.restrict(
            rules["read_only"], writable, scoped=rules["scoped"], list_only=rules["list_only"]
        )
    step("exec")
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    if "mount" in spec["namespaces"]:
        os.chdir(spec["cwd"])  # the bind of our own descriptor, inside our own root
    else:
        os.fchdir(spec["fds"][spec["cwd"]])
    os.execve(spec["argv"][0], spec["argv"], spec["env"])


def run_init(spec: LaunchSpec, result_w: int) -> None:
    """pid 1 of the sandbox: start the script, forward TERM, report its status, exit."""
    kernel.prctl(kernel.PR_SET_PDEATHSIG, signal.SIGKILL)
    poller = select.poll()  # the launcher may have died before PDEATHSIG was armed:
    poller.register(result_w, select.POLLERR)  # then nobody reads our result pipe
    if poller.poll(0):
        fail("the launcher died while the sandbox was being set up")
    if "mount" in spec["namespaces"]:
        step("mount")
        finish_root()
    if "uts" in spec["namespaces"]:
        step("uts")
        socket.sethostname("sandworker")
    if "network" in spec["namespaces"]:
        step("network")
        loopback_up()
    forward = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
    signal.pthread_sigmask(signal.SIG_BLOCK, forward)
    child = os.fork()
    if child == 0:
        try:
            exec_script(spec)
        except BaseException as exc:
            fail(f"{type(exc).__name__}: {exc}")
        os._exit(127)
    os.close(STATUS_FD)
    step("init")
    if os.getuid() == 0 and not spec["userns"]:
        kernel.keep_only_capabilities(1 << CAP_KILL)
    kernel.prctl(kernel.PR_SET_DUMPABLE, 0)
    kernel.prctl(kernel.PR_SET_NO_NEW_PRIVS, 1)
    if landlock.abi_version() >= 1:
        landlock.restrict([], [], scoped=False)
    for sig in forward:  # pid 1 of the namespace: kill(-1) reaches every process in it
        signal.signal(sig, lambda sig, _frame: os.kill(-1, sig))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, forward)
    os.write(result_w, struct.pack("i", reap_until(child)))
    os._exit(0)


def reap_until(pid: int) -> int:
    """Reap every child (we are pid 1) until `pid` ends; return its raw wait status."""
    while True:
        try:
            reaped, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 127 << 8
        if reaped == pid:
            return status


def exit_like(status: int) -> None:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # these two cannot be reset (EINVAL)
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 127)


def launch(spec: LaunchSpec) -> None:
    """In a fresh child of the zygote, descriptors 0-7 in place: confine, then exec.

    The supervisor moves this process into the run's cgroups while it builds
    its namespaces and root (a cgroup migration waits for an RCU grace period,
    several milliseconds, so the two overlap), then writes one byte on
    descriptor 7. Nothing forks or execs before that byte: every process of the
    run starts inside its cgroups.
    """
    os.umask(SCRIPT_UMASK)  # whatever the supervisor's (the unit's UMask=0077): see below
    step("namespaces")
    enter_namespaces(spec)
    if "mount" in spec["namespaces"]:
        step("mount")
        build_root(spec["mounts"], spec["fds"])
    step("cgroups")
    if os.read(GO_FD, 1) != b"g":
        fail("the supervisor went away before placing us in our cgroups")
    os.close(GO_FD)
    if "pid" not in spec["namespaces"]:
        if "mount" in spec["namespaces"]:
            finish_root()  # /proc then shows the host's pid namespace: reported as layer pid
        exec_script(spec)
    result_r, result_w = os.pipe()
    forward = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
    signal.pthread_sigmask(signal.SIG_BLOCK, forward)
    init = os.fork()
    if init == 0:
        os.close(result_r)
        try:
            run_init(spec, result_w)
        except BaseException as exc:
            fail(f"{type(exc).__name__}: {exc}")
        os._exit(127)
    os.close(result_w)
    os.close(STATUS_FD)

    def forward_to_init(sig: int, _frame: object) -> None:
        os.kill(init, sig)

    for sig in forward:
        signal.signal(sig, forward_to_init)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, forward)
    _, init_status = os.waitpid(init, 0)
    data = os.read(result_r, 4)
    exit_like(struct.unpack("i", data)[0] if len(data) == 4 else init_status)
