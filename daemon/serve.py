"""`sandworker serve`: the worker daemon on one Twisted reactor."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.internet import task
from twisted.internet.error import CannotListenError
from twisted.logger import STDLibLogObserver, globalLogBeginner
from twisted.protocols.tls import TLSMemoryBIOFactory

from sandworker import __version__
from sandworker.sandbox.cgroups import sweep
from sandworker.sandbox.policy import PolicyError, PolicySet, load_policies
from sandworker.sandbox.runner import Sandbox

from .audit import AuditLog, Event
from .certs import CertPrints, certificate_prints, write_pair
from .config import Config, ConfigError, load_config
from .control import ControlFactory, Reloader, clear_stale_socket
from .daemonize import Ready
from .http import ConnectionCap, Router, make_site, metrics_site
from .lifecycle import Lifecycle
from .metrics import CONTENT_TYPE, Metrics
from .pinning import ca_context_factory, identify, log_rejection, server_context_factory
from .pools import CheckSettings, Pools
from .scheduler import Scheduler
from .service import ScriptService
from .systemd import Notifier
from .tickets import RESULT_LOST, TicketStoreError
from .ticketstore import TicketStore
from .trust import TrustError, TrustStore
from .workers import ExternalWorker, WorkerError, WorkerStore

EXIT_CONFIG = 2
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_MMAP_THRESHOLD = 16 << 20  # above the largest status page (MAX_PAGE_BYTES, 8 MiB)
_TRIM_THRESHOLD = 32 << 20
log = logging.getLogger("sandworker.daemon")
reactor: Any = _reactor


@dataclass
class Daemon:
    factory: Any  # the script service's TLS listener factory
    store: TicketStore
    service: ScriptService
    audit: AuditLog
    reloader: Reloader
    metrics: Metrics
    trust_watch: TrustWatch


@dataclass
class _Live:
    """What a scrape reads of the running daemon (metrics.Live)."""

    service: ScriptService
    reloader: Reloader

    def running(self) -> int:
        return self.service.builtin.scheduler.running

    def queued(self) -> int:
        return self.service.builtin.scheduler.queued

    def workers(self) -> list[dict[str, Any]]:
        return self.service.proxy.pools.report()

    def reloads(self) -> tuple[float | None, bool]:
        return self.reloader.last_success, self.reloader.last_failed


class TrustWatch:
    """Audits each change of the trust file (it applies at the next handshake anyway)."""

    def __init__(self, trust: TrustStore, audit: AuditLog) -> None:
        self._trust, self._audit = trust, audit
        self._seen = self._read() or {}

    def _read(self) -> dict[str, tuple[str, ...]] | None:
        try:
            return {str(t.sha256 or t.sha1): t.projects for t in self._trust.entries()}
        except TrustError:  # (refused at every handshake meanwhile; a reload reports it)
            return None

    def check(self) -> None:
        now = self._read()
        if now is None or now == self._seen:
            return
        before, self._seen = self._seen, now
        self._audit.record(
            Event.TRUST_CHANGED,
            added=sorted(now.keys() - before.keys()),
            removed=sorted(before.keys() - now.keys()),
            projects_changed=sorted(k for k in now.keys() & before.keys() if now[k] != before[k]),
        )


def listen_metrics(config: Config, metrics: Metrics) -> Any:
    """The metrics listener (None when `metrics.listen` is empty), TLS if configured."""
    where = config["metrics.listen"]
    if not where:
        return None
    site = metrics_site(metrics.exposition, CONTENT_TYPE)
    tls = "metrics.tls_server_config."
    factory: Any = site
    if config[tls + "cert_file"]:
        ca = config[tls + "client_ca_file"]
        required = config[tls + "client_auth_type"] == "RequireAndVerifyClientCert"
        context = ca_context_factory(
            Path(config[tls + "cert_file"]),
            Path(config[tls + "key_file"]),
            Path(ca) if required else None,
            tls13_only=config[tls + "min_version"] == "TLS13",
        )
        factory = TLSMemoryBIOFactory(cast(Any, context), False, cast(Any, site))
    host, _, port = where.rpartition(":")
    return reactor.listenTCP(int(port), factory, interface=host.strip("[]"))


def build(config: Config) -> Daemon:
    """Everything the daemon runs, wired; raises on unusable files."""
    policies: PolicySet = load_policies([Path(config["sandbox.policy_dir"])])
    state = Path(config["state.directory"])
    store = TicketStore(state / "tickets")  # first: it creates and checks the state directory
    config.audit_log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    audit = AuditLog(config.audit_log)
    audit.record(Event.DAEMON_START, version=__version__, pid=os.getpid())
    sandbox = Sandbox(config.sandbox_settings())
    for name in sweep(sandbox.host.hierarchy, sandbox.cgroup_tag):  # before any script runs
        log.warning("start-up sweep: killed and removed the leftover cgroup %s", name)
    recovery = store.recover()
    store.prepare_ahead()
    for problem in recovery.problems:
        log.warning("recovery: %s", problem)
    for ticket_id in recovery.lost:
        audit.record(Event.TICKET_RECOVERED, ticket=ticket_id, exit_code=RESULT_LOST)
    scheduler = Scheduler(config["sandbox.max_concurrent"])
    pools = _pools(config, audit)
    metrics = Metrics()
    service = ScriptService(
        sandbox,
        lambda: reloader.policies,
        store,
        scheduler,
        audit,
        metrics=metrics,
        pools=pools,
        handed=recovery.handed,
        max_package=config["server.max_package"],
    )
    reloader = Reloader(
        config,
        policies,
        audit,
        set_limit=service.builtin.set_limit,
        check_workers=pools.check_all,
        on_failed=metrics.reload_failures.inc,
    )
    metrics.watch(_Live(service, reloader))
    trust = TrustStore(Path(config["tls.trust"]))
    trust_watch = TrustWatch(trust, audit)

    def refused(prints: CertPrints, reason: str, peer: str) -> None:
        metrics.untrusted.inc()
        log_rejection(prints, reason, peer)
        audit.record(
            Event.CLIENT_REFUSED, peer=peer, client=prints.sha256, sha1=prints.sha1, reason=reason
        )

    def failed_handshake(peer: str, reason: str) -> None:
        (metrics.untrusted if "certificate" in reason else metrics.handshake_failures).inc()
        log.warning("TLS handshake with %s failed: %s", peer, reason)
        audit.record(Event.CLIENT_REFUSED, peer=peer, client=None, reason=reason)

    router = Router(service.routes(), lambda r: cast(Any, identify(r.channel.transport, trust)))
    site = make_site(
        router,
        max_body=config["server.max_body"],
        max_package=config["server.max_package"],
        first_deadline=config["server.handshake_timeout"] + config["server.header_timeout"],
        header_deadline=config["server.header_timeout"],
        on_failed_handshake=failed_handshake,
    )
    context = server_context_factory(
        Path(config["tls.certificate"]), Path(config["tls.key"]), trust, refused
    )
    tls = TLSMemoryBIOFactory(cast(Any, context), False, cast(Any, site))
    factory = ConnectionCap(tls, config["server.max_connections"])
    return Daemon(factory, store, service, audit, reloader, metrics, trust_watch)


def _pools(config: Config, audit: AuditLog) -> Pools:
    workers = WorkerStore(Path(config["external.workers"]))
    workers.workers()  # an unusable file stops the start, with its message

    def refused(worker: ExternalWorker, error: str) -> None:
        log.error("external worker %s refused: %s", worker.name, error)
        audit.record(Event.WORKER_REFUSED, worker=worker.address, reason=error)

    def health(worker: ExternalWorker, healthy: bool, error: str) -> None:
        audit.record(
            Event.WORKER_HEALTH, pool=worker.pool, worker=worker.address, healthy=healthy,
            error=error or None,
        )  # fmt: skip

    settings = CheckSettings(
        interval=config["external.check_interval"],
        timeout=config["external.check_timeout"],
        unhealthy_after=config["external.unhealthy_after"],
        healthy_after=config["external.healthy_after"],
        lost_after=config["external.lost_after"],
    )
    return Pools(
        workers,
        certificate=Path(config["tls.certificate"]),
        key=Path(config["tls.key"]),
        settings=settings,
        state_dir=Path(config["state.directory"]),
        on_refused=refused,
        on_health=health,
    )


def start_logging(*, verbose: bool = False) -> None:
    """Every log line to stderr (journald keeps it under systemd), Twisted's included."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format="sandworker %(levelname)s %(name)s: %(message)s",
    )
    observer: Any = STDLibLogObserver()
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


DEV_PORT = 10933


def dev_home(base: Path, port: int = DEV_PORT) -> Path:
    """Create (once) a development home: config, policy, worker and client certificates,
    trust and a client profile. Returns the configuration file."""
    config = base / "sandworker.toml"
    if config.exists():
        return config
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_pair(base / "worker.crt", base / "worker.key", "sandworker dev worker")
    write_pair(base / "client.crt", base / "client.key", "sandworker dev client")
    TrustStore(base / "trust.toml").add(certificate_prints(base / "client.crt"))
    (base / "policies").mkdir(mode=0o755, exist_ok=True)
    shipped = Path(__file__).resolve().parent.parent / "policies" / "default.toml"
    text = shipped.read_text()
    if os.geteuid() != 0:  # unprivileged: require only what a user namespace can give
        text = text.replace('"account",', "")
    (base / "policies" / "default.toml").write_text(text)
    worker = certificate_prints(base / "worker.crt").sha256
    (base / "profile.toml").write_text(
        f'url = "https://127.0.0.1:{port}"\nthumbprint = "{worker}"\n'
        'certificate = "client.crt"\nkey = "client.key"\n'
    )
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\n[tls]\ncertificate = "{base}/worker.crt"\n'
        f'key = "{base}/worker.key"\ntrust = "{base}/trust.toml"\n[state]\n'
        f'directory = "{base}/state"\n[sandbox]\npolicy_dir = "{base}/policies"\n'
        f'[external]\nworkers = "{base}/workers.toml"\n'
        # (metrics beside the default port only: daemons on other ports share a host)
        f'[metrics]\nlisten = "{f"127.0.0.1:{port + 1}" if port == DEV_PORT else ""}"\n'
    )
    return config


def _keep_large_buffers() -> None:
    """Let glibc reuse freed megabyte buffers instead of mapping fresh pages for each one.

    A status page is a few megabytes, copied a few times on its way into TLS. By default
    glibc maps each such buffer and unmaps it when freed, so every page of every copy is
    faulted in and zeroed again: half of the daemon's CPU time while serving a chatty
    script's log. With fixed thresholds they come from the heap, and at most
    _TRIM_THRESHOLD bytes of freed heap stay with the process. Other C libraries keep
    their own defaults."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


def _dev(args: argparse.Namespace) -> None:
    args.config = str(dev_home(Path.cwd() / "dev-home"))
    mode = "full isolation (root)" if os.geteuid() == 0 else "unprivileged layers only (not root)"
    print(
        f"sandworker: development mode, {mode}; try, in another shell:\n"
        f"  {sys.executable.rsplit('/', 1)[0]}/sandworker script run --profile"
        f" {Path(args.config).parent}/profile.toml --project demo -c 'id; echo hello'",
        flush=True,
    )


def cmd_serve(args: argparse.Namespace, ready: Ready | None = None) -> int:
    """The daemon; `ready` hears from it once it is (a detached daemon's, cli.py)."""
    if args.dev:
        _dev(args)
    notifier = Notifier.from_environment()  # first: nothing the daemon starts inherits it
    start_logging(verbose=args.verbose)
    _keep_large_buffers()
    try:
        config = load_config(Path(args.config))
        daemon = build(config)
        host, _, port = config["server.listen"].rpartition(":")
        listening = reactor.listenTCP(int(port), daemon.factory, interface=host.strip("[]"))
        control = config.control_socket
        clear_stale_socket(control)
        lifecycle = Lifecycle(
            notifier, daemon.service, daemon.reloader, state_dir=Path(config["state.directory"])
        )
        reactor.listenUNIX(str(control), ControlFactory(lifecycle.reload), mode=0o600)
        scrape = listen_metrics(config, daemon.metrics)
    except (ConfigError, PolicyError) as exc:
        return _refuse(f"sandworker: invalid configuration:\n{exc}", ready)
    except (TicketStoreError, TrustError, WorkerError, OSError, CannotListenError) as exc:
        return _refuse(f"sandworker: cannot start: {exc}", ready)
    store, service, audit = daemon.store, daemon.service, daemon.audit
    reactor.addSystemEventTrigger("before", "shutdown", service.shutdown)
    task.LoopingCall(_sync, store, audit).start(0.2, now=False)
    task.LoopingCall(daemon.trust_watch.check).start(2.0, now=False)
    service.listening()
    pools = service.proxy.pools
    reactor.suggestThreadPoolSize(64)  # health checks and calls to external workers block
    task.LoopingCall(pools.check_all).start(pools.settings.interval, now=True)
    retention = config["state.retention"]  # purged at start-up, then every half of it (<= 1 h)
    task.LoopingCall(service.purge, retention).start(min(retention / 2, 3600), now=True)
    reactor.callWhenRunning(lifecycle.started)  # (after Twisted's own signal handlers)
    if scrape is not None:
        print(f"sandworker: metrics on {scrape.getHost().host}:{scrape.getHost().port}")
    print(f"sandworker: listening on {host}:{listening.getHost().port}", flush=True)
    if ready is not None:
        ready.say(f"ready: pid {os.getpid()}, listening on {host}:{listening.getHost().port}")
    reactor.run()
    notifier.send(STATUS="stopped")
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.lstat(control).st_mode):
            os.unlink(control)
    audit.record(Event.DAEMON_STOP, pid=os.getpid())
    store.close()
    audit.close()
    return 0


def _refuse(message: str, ready: Ready | None) -> int:
    print(message, file=sys.stderr)
    if ready is not None:
        ready.say(message)
    return EXIT_CONFIG


def _sync(store: TicketStore, audit: AuditLog) -> None:
    store.sync()
    audit.sync()
