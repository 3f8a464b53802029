"""Who may do what. Each route calls `authorize` itself, before it hands a connection to any fast
path; nothing here is only a middleware that the streaming lane could skip.

Credentials, looked for in this order:

- `Authorization: Bearer <token>`: one of `TIDINGS_AUTH_TOKENS`, role `admin` (control and read)
  or `viewer` (read only).
- The `tidings_session` cookie that the dashboard's sign-in sets (`POST /api/session`): signed,
  expiring, carrying its role and a fingerprint of the token it was made from, so removing a
  token from the configuration ends the sessions made from it.
- `?token=<share token>` (`POST /api/runs/{id}/share`): signed, expiring, read-only, one run.

With no tokens configured the gateway is open and every caller is an admin; it then serves on
loopback only (`check_exposure`) unless told to run open anyway.

Signed values are `<kind>.<fields>.<mac>`, the mac an HMAC-SHA256 under `TIDINGS_SECRET`, or
under a key derived from the tokens when no secret is set, so gateways configured alike agree
without more configuration (and changing the tokens invalidates every cookie and share link).
Every comparison of a secret is constant-time, and no token is ever put in a log line.

A caller's `client` is what the per-client limits count: its token or session when auth is on,
else its address (`X-Forwarded-For` believed only from `TIDINGS_TRUSTED_PROXIES`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from starlette.requests import HTTPConnection

from tidings.errors import TidingsError
from tidings.settings import Settings

__all__ = [
    "SESSION_COOKIE",
    "Access",
    "Forbidden",
    "Need",
    "Networks",
    "Principal",
    "Unauthorized",
    "access_of",
    "authenticate",
    "authorize",
    "check_exposure",
    "client_address",
    "is_https",
    "is_loopback",
    "permit",
    "principal_of",
]

log = logging.getLogger(__name__)

SESSION_COOKIE = "tidings_session"
Role = Literal["admin", "viewer", "share"]


class Need(Enum):
    READ = "read"
    CONTROL = "control"


class Unauthorized(TidingsError):
    """No credentials, or credentials that are invalid or expired."""

    code = "unauthorized"
    status = 401
    headers = {"WWW-Authenticate": 'Bearer realm="tidings"'}


class Forbidden(TidingsError):
    """Valid credentials that may not do this."""

    code = "forbidden"
    status = 403


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    client: str
    run_id: str | None = None  # a share token's one run
    via: Literal["open", "bearer", "session", "share"] = "open"
    expires_at: float | None = None

    def may(self, need: Need, run_id: str | None) -> bool:
        if self.role == "share":
            return need is Need.READ and run_id is not None and run_id == self.run_id
        return need is Need.READ or self.role == "admin"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Networks:
    """A comma-separated list of addresses and CIDRs, for membership tests."""

    def __init__(self, spec: str) -> None:
        parts = [p.strip() for p in spec.split(",")]
        self.nets = [ipaddress.ip_network(p, strict=False) for p in parts if p]

    def __contains__(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.nets)


class Access:
    """The gateway's credentials policy, built once from settings."""

    def __init__(self, settings: Settings) -> None:
        self.tokens = [(role, token.encode()) for role, token in settings.auth_pairs]
        self.open = not self.tokens
        if settings.secret:
            key = settings.secret.encode()
        else:
            joined = b"\0".join(sorted(t for _, t in self.tokens))
            key = hashlib.sha256(b"tidings-signing\0" + joined).digest()
        self._key = key
        self.session_ttl = settings.session_ttl_s
        self.share_ttl = settings.share_ttl_s
        self.proxies = Networks(settings.trusted_proxies)
        self._fingerprints = {self.fingerprint(t): role for role, t in self.tokens}

    # -- signing -----------------------------------------------------------------------------

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())[:32]

    def _sign(self, payload: str) -> str:
        return f"{payload}.{self._mac(payload)}"

    def _verify(self, value: str, kind: str, fields: int) -> list[str] | None:
        parts = value.split(".")
        if len(parts) != fields + 2 or parts[0] != kind:
            return None
        payload, mac = value.rpartition(".")[0], parts[-1]
        if not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            return None
        return parts[1:-1]

    def fingerprint(self, token: bytes) -> str:
        return _b64(hmac.new(self._key, b"fp\0" + token, hashlib.sha256).digest())[:16]

    # -- credentials -------------------------------------------------------------------------

    def bearer_role(self, token: str) -> Literal["admin", "viewer"] | None:
        """The role of a configured token; every token is compared, in constant time."""
        given = token.encode()
        found: Literal["admin", "viewer"] | None = None
        for role, expected in self.tokens:
            if hmac.compare_digest(given, expected):
                found = "admin" if role == "admin" else "viewer"
        return found

    def session_cookie(self, token: str) -> tuple[str, float]:
        """A signed session value for a valid token, and when it expires. Unauthorized else."""
        role = self.bearer_role(token)
        if role is None:
            raise Unauthorized("invalid token")
        expires = int(time.time()) + self.session_ttl
        sid = secrets.token_urlsafe(9)
        fp = self.fingerprint(token.encode())
        return self._sign(f"s1.{sid}.{role}.{expires}.{fp}"), float(expires)

    def share_token(self, run_id: str, ttl_s: int | None = None) -> tuple[str, float]:
        """A read-only token for `run_id`, valid `ttl_s` (at most the configured maximum)."""
        ttl = min(ttl_s or self.share_ttl, self.share_ttl)
        expires = int(time.time()) + ttl
        return self._sign(f"r1.{run_id}.{expires}"), float(expires)

    def _session(self, value: str) -> Principal:
        fields = self._verify(value, "s1", 4)
        if fields is None:
            raise Unauthorized("invalid session; sign in again")
        sid, role, expires, fp = fields
        if not expires.isdigit() or int(expires) < time.time():
            raise Unauthorized("session expired; sign in again")
        if self._fingerprints.get(fp) != role or role not in ("admin", "viewer"):
            raise Unauthorized("session no longer valid; sign in again")
        return Principal(
            "admin" if role == "admin" else "viewer",
            f"session:{sid}",
            via="session",
            expires_at=float(expires),
        )

    def _share(self, value: str, client: str) -> Principal:
        fields = self._verify(value, "r1", 2)
        if fields is None:
            raise Unauthorized("invalid share token")
        run_id, expires = fields
        if not expires.isdigit() or int(expires) < time.time():
            raise Unauthorized("share token expired")
        return Principal("share", client, run_id=run_id, via="share", expires_at=float(expires))

    def identify(self, conn: HTTPConnection) -> Principal:
        """Who is calling. Unauthorized when auth is on and no valid credential came."""
        address = client_address(conn, self.proxies)
        if self.open:
            return Principal("admin", f"addr:{address}")
        header = conn.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("use `Authorization: Bearer <token>`")
            role = self.bearer_role(token.strip())
            if role is None:
                raise Unauthorized("invalid token")
            return Principal(
                role, f"token:{self.fingerprint(token.strip().encode())}", via="bearer"
            )
        share = conn.query_params.get("token")
        if share:
            return self._share(share, f"addr:{address}")
        cookie = conn.cookies.get(SESSION_COOKIE)
        if cookie:
            return self._session(cookie)
        raise Unauthorized("authentication required: a bearer token, a session or a share token")


def access_of(conn: HTTPConnection) -> Access:
    access: Access = conn.app.state.access
    return access


def authorize(conn: HTTPConnection, need: Need, run_id: str | None = None) -> Principal:
    """The caller, if it may do `need` (on `run_id`, for run routes). 401 or 403 otherwise.

    Every route calls this itself; a route that serves one run names it, so a share token for
    another run, or a share token on a route of all runs, is refused."""
    principal = authenticate(conn)
    permit(principal, need, run_id)
    return principal


def authenticate(conn: HTTPConnection) -> Principal:
    """The caller, whatever it may do; 401 when auth is on and no valid credential came. For a
    route that must know who calls before it can say what is asked (then `permit`)."""
    principal = access_of(conn).identify(conn)
    conn.scope["tidings.principal"] = principal
    return principal


def permit(principal: Principal, need: Need, run_id: str | None = None) -> None:
    """403 unless `principal` may do `need` (on `run_id`)."""
    if not principal.may(need, run_id):
        if principal.role == "share":
            raise Forbidden("a share token reads its own run only")
        raise Forbidden("this token may read but not control runs")


def principal_of(conn: HTTPConnection) -> Principal:
    """The caller `authorize` found for this request (it must have been called)."""
    principal = conn.scope.get("tidings.principal")
    assert isinstance(principal, Principal), "authorize the request first"
    return principal


def client_address(conn: HTTPConnection, proxies: Networks) -> str:
    """The caller's address: the peer, or, when the peer is a trusted proxy, the nearest
    untrusted address in `X-Forwarded-For` (read right to left)."""
    peer = conn.client.host if conn.client else "unknown"
    if peer not in proxies:
        return peer
    forwarded = conn.headers.get("x-forwarded-for", "")
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    for hop in reversed(hops):
        if hop not in proxies:
            return hop[:64]
    return hops[0][:64] if hops else peer


def is_https(conn: HTTPConnection, proxies: Networks) -> bool:
    if conn.url.scheme == "https":
        return True
    peer = conn.client.host if conn.client else ""
    return peer in proxies and conn.headers.get("x-forwarded-proto", "").lower() == "https"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to serve open (no tokens) on a non-loopback address unless `insecure` says so.

    Raises ValueError with the message to show; logs a loud warning when told to run open."""
    if settings.auth_pairs or is_loopback(settings.host):
        return
    if not settings.insecure:
        raise ValueError(
            f"refusing to serve on {settings.host} without authentication: set "
            "TIDINGS_AUTH_TOKENS (e.g. admin:<secret>), bind 127.0.0.1, or pass --insecure "
            "(TIDINGS_INSECURE=true) to let anyone who reaches the port control every run"
        )
    log.warning(
        "RUNNING OPEN on %s: no TIDINGS_AUTH_TOKENS, so anyone who reaches this port can start, "
        "stop and read every run (--insecure)",
        settings.host,
    )
