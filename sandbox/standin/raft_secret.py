"""The raft shared secret on the stand-in's raft API (port 28004): attach it to every raft request a node sends, and
check it on every raft request a node receives.

Upstream (databend-meta 260629, crates/server/service/src/raft_secret.rs): `RaftSecretInterceptor` puts the node's
`raft_secret` into the gRPC metadata `x-databend-meta-raft-secret` of every raft RPC it sends (nothing when unset);
`RaftSecretChecker` on the receiving node passes everything when `raft_accepted_secrets` is empty and strict is off,
else compares the presented value with `raft_accepted_secrets` ONLY (the node's own `raft_secret` is not implicitly
accepted), and when `raft_secret_strict` is on refuses a missing or unaccepted one with gRPC `Unauthenticated`
`raft secret is <missing|unaccepted>: from:<peer addr>` (the value is never echoed or logged). With strict off it
passes and logs a warning, at most once per peer IP per 10 s. The stand-in speaks HTTP on that port, so the metadata
is an HTTP header and the refusal is a 401 with the same text.
"""
from __future__ import annotations

import hmac
import threading
import time
from typing import Any

from . import wire
from .config import MetaConfig

RAFT_SECRET_HEADER = "x-databend-meta-raft-secret"
REPORT_INTERVAL_S = 10.0


def outgoing_headers(cfg: MetaConfig) -> dict[str, str]:
    """The headers a raft request from this node carries: the secret when `raft_secret` is set, else none."""
    if cfg.raft_secret is None:
        return {}
    return {RAFT_SECRET_HEADER: cfg.raft_secret.expose()}


class Checker:
    """Checks the secret on received raft requests (`wire.serve(check=...)`)."""

    def __init__(self, cfg: MetaConfig, log: Any) -> None:
        self.accepted = [s.expose().encode() for s in cfg.raft_accepted_secrets]
        self.strict = cfg.strict
        self.log = log
        self._reported: dict[str, float] = {}
        self._lock = threading.Lock()

    def decide(self, presented: str | None) -> str | None:
        """None = pass; else "missing" or "unaccepted" (RaftSecretChecker::decide)."""
        if not self.accepted and not self.strict:
            return None
        if presented is None:
            return "missing"
        value = presented.encode()
        hit = False
        for secret in self.accepted:       # every candidate compared, no short circuit (as upstream)
            hit |= hmac.compare_digest(value, secret)
        return None if hit else "unaccepted"

    def _should_report(self, peer: str) -> bool:
        ip = peer.rpartition(":")[0]
        now = time.monotonic()
        with self._lock:
            self._reported = {k: t for k, t in self._reported.items() if now - t < REPORT_INTERVAL_S}
            if ip in self._reported:
                return False
            self._reported[ip] = now
            return True

    def __call__(self, headers: Any, peer: str) -> tuple[int, str, bytes] | None:
        reason = self.decide(headers.get(RAFT_SECRET_HEADER))
        if reason is None:
            return None
        if self.strict:
            if self._should_report(peer):
                self.log.warn(f"raft secret is {reason}: from:{peer}: refused because `raft_secret_strict` is on; "
                              f"further reports about this peer are suppressed for {REPORT_INTERVAL_S:.0f}s")
            return wire.text_reply(f"raft secret is {reason}: from:{peer}", 401)
        if self._should_report(peer):
            self.log.warn(f"raft secret is {reason}: from:{peer}: accepted because `raft_secret_strict` is off; "
                          f"further reports about this peer are suppressed for {REPORT_INTERVAL_S:.0f}s")
        return None


def rpc_error_text(e: Exception) -> str:
    """How a raft-RPC client error reads in databend-meta's error chains: a 401 refusal as tonic's Status Display
    (`status: Unauthenticated, message: "…"`, inferred from tonic's Display impl), anything else as is."""
    text = str(e)
    if isinstance(e, RuntimeError) and text.startswith("401 "):
        message = text.split(": ", 1)[1] if ": " in text else text
        return (f'tonic::status::Status: status: Unauthenticated, message: "{message}", details: [], '
                "metadata: MetadataMap { headers: {} }")
    return text
