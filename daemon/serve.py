"""`sandworker serve`: the worker daemon on one Twisted reactor."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.internet import task
from twisted.python import log

from sandworker.sandbox.cgroups import sweep
from sandworker.sandbox.policy import PolicyError, PolicySet, load_policies
from sandworker.sandbox.runner import Sandbox

from .certs import certificate_prints, write_pair
from .config import Config, ConfigError, load_config
from .http import Router, make_site
from .pinning import identify, server_context_factory
from .scheduler import Scheduler
from .service import ScriptService
from .ticketstore import TicketStore
from .trust import TrustStore

EXIT_CONFIG = 2
reactor: Any = _reactor


def build(config: Config) -> tuple[Any, TicketStore, ScriptService]:
    """Everything the daemon runs, wired; raises on unusable files."""
    policies: PolicySet = load_policies([Path(config["sandbox.policy_dir"])])
    sandbox = Sandbox(config.sandbox_settings())
    for name in sweep(sandbox.host.hierarchy):  # before any script runs: nothing else owns them
        log.msg(f"start-up sweep: killed and removed the leftover cgroup {name}")
    store = TicketStore(Path(config["state.directory"]) / "tickets")
    recovery = store.recover()
    for problem in recovery.problems:
        log.msg(f"recovery: {problem}")
    scheduler = Scheduler(config["sandbox.max_concurrent"])
    service = ScriptService(sandbox, lambda: policies, store, scheduler)
    trust = TrustStore(Path(config["tls.trust"]))
    router = Router(service.routes(), lambda r: cast(Any, identify(r.channel.transport, trust)))
    site = make_site(
        router,
        max_connections=config["server.max_connections"],
        max_body=config["server.max_body"],
        first_deadline=config["server.handshake_timeout"] + config["server.header_timeout"],
        header_deadline=config["server.header_timeout"],
    )
    context = server_context_factory(
        Path(config["tls.certificate"]), Path(config["tls.key"]), trust
    )
    return (site, context), store, service


DEV_PORT = 10933


def dev_home(base: Path) -> Path:
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
        f'url = "https://127.0.0.1:{DEV_PORT}"\nthumbprint = "{worker}"\n'
        'certificate = "client.crt"\nkey = "client.key"\n'
    )
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{DEV_PORT}"\n[tls]\ncertificate = "{base}/worker.crt"\n'
        f'key = "{base}/worker.key"\ntrust = "{base}/trust.toml"\n[state]\n'
        f'directory = "{base}/state"\n[sandbox]\npolicy_dir = "{base}/policies"\n'
    )
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    if args.dev:
        args.config = str(dev_home(Path.cwd() / "dev-home"))
        mode = (
            "full isolation (root)" if os.geteuid() == 0 else "unprivileged layers only (not root)"
        )
        print(
            f"sandworker: development mode, {mode}; try, in another shell:\n"
            f"  {sys.executable.rsplit('/', 1)[0]}/sandworker script run --profile"
            f" {Path(args.config).parent}/profile.toml --project demo -c 'id; echo hello'",
            flush=True,
        )
    try:
        config = load_config(Path(args.config))
        (site, context), store, service = build(config)
    except (ConfigError, PolicyError) as exc:
        print(f"sandworker: invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    host, _, port = config["server.listen"].rpartition(":")
    listening = reactor.listenSSL(int(port), site, context, interface=host.strip("[]"))
    reactor.addSystemEventTrigger("before", "shutdown", service.shutdown)
    task.LoopingCall(store.sync).start(0.2, now=False)
    task.LoopingCall(store.purge, config["state.retention"]).start(3600, now=False)
    print(f"sandworker: listening on {host}:{listening.getHost().port}", flush=True)
    reactor.run()
    store.close()
    return 0
