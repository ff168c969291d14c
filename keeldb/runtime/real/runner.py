"""Run ONE node as a real OS process:

    python -m keeldb.runtime.real.runner --system register --id n1 \\
        --peers n1=127.0.0.1:7001,n2=127.0.0.1:7002 --data DIR \\
        --client-port 7101 --admin-port 7201

`--system` is a short name from `SYSTEMS` or any `package.module:Factory` whose zero-argument
call builds a `keeldb.node.effects.Node`. The runtime is a host for node code, so it loads the
node by name instead of importing the (higher-layer) systems it may run.

Once every port listens the process prints one JSON line on stdout, e.g.
`{"ready": true, "node": "n1", "pid": 4242, "peer_port": 7001, "client_port": 7101,
"admin_port": 7201}`, then logs to stderr. SIGTERM/SIGINT stop it cleanly (exit 0); a node
that halts itself or crashes exits with 70; a usage error exits with 2.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from keeldb.errors import ConfigError
from keeldb.node.effects import Node
from keeldb.runtime.real.host import HostConfig, NodeHost
from keeldb.runtime.real.transport import Address
from keeldb.types import NodeId

EXIT_USAGE = 2

SYSTEMS: dict[str, str] = {
    "register": "keeldb.testing.register_service:RegisterNode",
    "primary-backup": "keeldb.testing.primary_backup:PrimaryBackupNode",
    "echo": "keeldb.testing.echo:EchoNode",
    "raft-kv": "keeldb.testing.raft_kv:RaftKvNode",
}
"""Short names of the reference systems (keeldb/testing/) for `--system`."""


def resolve_system(name: str) -> Callable[[], Node]:
    """The node factory named by a short name or by `module:attribute`."""
    target = SYSTEMS.get(name, name)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"unknown system {name!r}; use one of {', '.join(SYSTEMS)} "
                          "or package.module:Factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"system {name!r}: cannot import {module_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"system {name!r}: {module_name} has no callable {attr!r}")
    return factory  # type: ignore[no-any-return]


def _address(text: str, what: str) -> Address:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} {text!r} must look like 127.0.0.1:7001")
    return host, int(port)


def parse_peers(text: str) -> dict[NodeId, Address]:
    """`n1=127.0.0.1:7001,n2=127.0.0.1:7002` -> {n1: (host, port), ...}."""
    peers: dict[NodeId, Address] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        node, sep, addr = item.partition("=")
        if not sep or not node:
            raise ConfigError(f"peer {item!r} must look like n1=127.0.0.1:7001")
        if node in peers:
            raise ConfigError(f"peer {node!r} listed twice in --peers")
        peers[NodeId(node)] = _address(addr, f"address of {node}")
    if not peers:
        raise ConfigError("--peers is empty; list every node, this one included")
    return peers


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m keeldb.runtime.real.runner",
                                description="Run one keeldb node as a real process.")
    p.add_argument("--system", required=True,
                   help=f"node code: {', '.join(SYSTEMS)} or package.module:Factory")
    p.add_argument("--id", required=True, help="this node's id, one of --peers")
    p.add_argument("--peers", required=True,
                   help="every node as id=host:port (peer port), this one included")
    p.add_argument("--data", required=True, help="this node's data directory")
    p.add_argument("--host", default="127.0.0.1", help="address of the client and admin ports")
    p.add_argument("--client-port", type=int, default=0, help="client port (0: any free)")
    p.add_argument("--admin-port", type=int, default=0, help="admin port (0: any free)")
    p.add_argument("--seed", default="0", help="seed of the transport's backoff jitter")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    return p


def config_from_args(args: argparse.Namespace) -> HostConfig:
    peers = parse_peers(args.peers)
    node = NodeId(args.id)
    if node not in peers:
        raise ConfigError(f"--id {node!r} is not in --peers ({', '.join(peers)})")
    return HostConfig(node=node, peers=peers, data_dir=args.data,
                      client=(args.host, args.client_port), admin=(args.host, args.admin_port),
                      system=args.system, seed=args.seed)


async def serve(config: HostConfig, factory: Callable[[], Node]) -> int:
    """Host the node until a signal, a halt or a crash; returns the exit code."""
    host = NodeHost(config, factory)
    try:
        await host.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, host.stop, 0, signal.Signals(sig).name)
        ready: dict[str, Any] = {"ready": True, **{k: v for k, v in host.status().items()
                                                   if k in ("node", "pid", "system")}}
        ready.update(peer_port=host.transport.port, client_port=host.client_port,
                     admin_port=host.admin.port)
        print(json.dumps(ready), flush=True)
        return await host.wait()
    finally:
        await host.close()


def main(argv: Sequence[str] | None = None) -> int:
    if not __debug__:
        print("error: keeldb refuses to run under python -O (its assertions guard invariants)",
              file=sys.stderr)
        return EXIT_USAGE
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s {args.id} %(name)s %(levelname)s %(message)s")
    try:
        config = config_from_args(args)
        factory = resolve_system(args.system)
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    try:
        import uvloop  # optional: a faster event loop when installed

        runner: Callable[..., int] = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(serve(config, factory))


if __name__ == "__main__":
    sys.exit(main())
