"""Every switch of the simulator: one frozen dataclass, its argparse flags and validation.

Fidelity switches for behaviour Tradovate leaves undocumented (tradovate-protocol.md [U]):
``authorize_body`` (raw token only, or also JSON-quoted), ``entity_types_default``
(``per_form``: sharded -> none, unsharded -> all), ``empty_collections`` (every one of
the 31 SyncMessage collections as an array, or only non-empty ones), ``eviction`` (what
the renewal of a session evicted by the session cap answers), ``client_idle_timeout``,
``split_delay``/``split_end``. Transport: ``tls_cert``/``tls_key`` serve everything over
TLS on the one port. Measurement: ``stamp_events`` adds ``"ts"`` to live props,
``stamp_entities`` to their entities (bench/latency.py reads it back from the sink).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field, fields
from typing import Any

from shardsync.simulator.manual import ADMIN_API

EXPRESSIONS = ("modAccountId", "modUserId")
SHUTDOWN_REASONS = ("Maintenance", "ConnectionQuotaReached", "IPQuotaReached")


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class SimOptions:
    """All simulator switches; the [U] facts of tradovate-protocol.md each get one."""

    host: str = _opt("127.0.0.1", "address to bind")
    port: int = _opt(0, "TCP port for REST, WebSocket and admin (0 = a random free port)")
    accounts: int = _opt(20, "number of accounts in the generated ground truth")
    users: int = _opt(5, "number of users owning those accounts")
    event_rate: float = _opt(10.0, "generated changes per second across all accounts (0 = none)")
    seed: int = _opt(1, "seed of the deterministic generator")
    token_lifetime: float = _opt(4800.0, "access token lifetime in seconds")
    username: str = _opt("demo", "valid login name")
    password: str = _opt("demo-password", "valid login password")
    secret: str = _opt("demo-secret", "valid API secret (sec)")
    session_cap: int = _opt(2, "concurrent login sessions; a further login evicts the oldest (0 = no cap)")
    authorize_timeout: float = _opt(10.0, "seconds after 'o' within which 'authorize' must succeed")
    server_heartbeat: float = _opt(2.5, "send 'h' after this many seconds without any other frame")
    client_idle_timeout: float = _opt(30.0, "close a socket whose client sent nothing this long (0 = off)")
    reference_routing: str = _opt(
        "all", "shards that receive reference and user-level data under sharding", ("all", "zero")
    )
    require_split: bool = _opt(False, "close the socket on a syncrequest without splitResponses:true")
    entity_types_default: str = _opt(
        "per_form", "entityTypes when the syncrequest omits it (per_form: sharded -> none, unsharded -> all)",
        ("per_form", "empty", "all"),
    )
    authorize_body: str = _opt(
        "lenient", "authorize body: the raw token only (strict) or also the token JSON-quoted (lenient)",
        ("strict", "lenient"),
    )
    empty_collections: str = _opt(
        "include", "snapshots carry all 31 SyncMessage collections as arrays (include; split: in the first "
        "part) or only users/contractGroups and the non-empty ones (omit)", ("include", "omit"),
    )
    eviction: str = _opt(
        "revoke401", "renewal of a session evicted by session_cap: 401, or HTTP 408/502 with an empty body",
        ("revoke401", "http408", "http502"),
    )
    second_sync: str = _opt("reject", "a second syncrequest on one socket", ("reject", "ignore", "replace"))
    snapshot_mode: str = _opt("single", "snapshot as one response or several same-id ones", ("single", "split"))
    split_chunks: int = _opt(3, "number of same-id snapshot chunks in split mode")
    split_end: str = _opt(
        "none", "split completion: nothing, a final d:{} or a final d:{'done':true}", ("none", "empty", "flag")
    )
    snapshot_frames: str = _opt("many", "all snapshot messages in one a[...] frame, or one frame each", ("one", "many"))
    interleave_props: int = _opt(0, "generated changes of the shard inserted after each snapshot chunk")
    trailing_props: int = _opt(0, "generated changes of the shard sent right after the whole snapshot (end marker too)")
    split_delay: float = _opt(0.0, "seconds between snapshot chunks in split mode (each chunk then in its own frame)")
    entity_list: str = _opt("never", "send props 'entity' as a list", ("never", "some", "always"))
    batch: int = _opt(1, "at most this many live messages per a[...] frame")
    deleted_entity: str = _opt("full", "Deleted events carry the full entity or only its id", ("full", "id"))
    error_quoting: str = _opt("plain", "error text in d plain or JSON-quoted again", ("plain", "json"))
    close_on_revoke: bool = _opt(False, "close sockets authorized with a token when it is revoked")
    max_message_size: int = _opt(128 * 1024 * 1024, "largest inbound WebSocket message in bytes")
    stamp_events: bool = _opt(False, 'add "ts": <epoch seconds> to every live props message as it is written')
    stamp_entities: bool = _opt(
        False, 'the same "ts" inside (a copy of) every live props entity, so it reaches a sink\'s rows'
    )
    tls_cert: str = _opt("", "PEM certificate (chain) file: serve REST, WebSocket and admin over TLS")
    tls_key: str = _opt("", "PEM private key file of tls_cert")

    def __post_init__(self) -> None:
        problems = validate(self)
        if problems:
            raise ValueError("invalid simulator options: " + "; ".join(problems))


def validate(options: SimOptions) -> list[str]:
    """Every problem with ``options``, worded for an operator."""
    problems = []
    for f in fields(options):
        choices = f.metadata.get("choices")
        value = getattr(options, f.name)
        if choices and value not in choices:
            problems.append(f"{f.name}={value!r} is not one of {', '.join(choices)}")
    for name in ("accounts", "users", "split_chunks", "batch"):
        if getattr(options, name) < 1:
            problems.append(f"{name} must be >= 1")
    for name in ("port", "session_cap", "interleave_props", "trailing_props"):
        if getattr(options, name) < 0:
            problems.append(f"{name} must be >= 0")
    for name in ("event_rate", "client_idle_timeout", "split_delay"):
        if getattr(options, name) < 0:
            problems.append(f"{name} must be >= 0")
    for name in ("token_lifetime", "authorize_timeout", "server_heartbeat"):
        if getattr(options, name) <= 0:
            problems.append(f"{name} must be > 0")
    if bool(options.tls_cert) != bool(options.tls_key):
        problems.append("tls_cert and tls_key go together")
    for name in ("tls_cert", "tls_key"):
        path = getattr(options, name)
        if path and not os.path.isfile(path):
            problems.append(f"{name}={path!r} is not a readable file")
    if options.users > options.accounts:
        problems.append("users must not exceed accounts (every user owns at least one account)")
    return problems


def replace(options: SimOptions, **changes: Any) -> SimOptions:
    """A copy of ``options`` with ``changes``; unknown names are an error, not ignored."""
    known = {f.name for f in fields(options)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(f"unknown simulator option(s): {', '.join(unknown)}")
    return dataclasses.replace(options, **changes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per option (``--event-rate``, ``--split-end`` ...); the admin API goes in the epilog."""
    parser.epilog = ADMIN_API
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for f in fields(SimOptions):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (default: {f.default})"
        if f.type in ("bool", bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                                help=f.metadata["help"])
            continue
        kind = {"int": int, "float": float, "str": str}[str(f.type)]
        parser.add_argument(flag, dest=f.name, type=kind, default=f.default, choices=f.metadata["choices"],
                            help=help_text)


def from_args(ns: argparse.Namespace) -> SimOptions:
    """Options from a namespace filled by :func:`add_arguments`; absent attributes keep defaults."""
    values = {f.name: getattr(ns, f.name) for f in fields(SimOptions) if hasattr(ns, f.name)}
    return SimOptions(**values)
