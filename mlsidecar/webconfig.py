"""TLS and basic auth for the scrape port: the Prometheus exporter-toolkit web config.

``--web.config.file`` takes the same YAML file as node_exporter
(https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md)::

    tls_server_config:
      cert_file: server.crt          # relative paths are relative to this file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
      client_ca_file: ca.crt
      min_version: TLS12             # TLS10 | TLS11 | TLS12 (default) | TLS13
      max_version: TLS13
      cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]   # Go names, TLS 1.2 only
      prefer_server_cipher_suites: true
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\\n')

What mlsidecar does differently, on purpose:

* ``/healthz`` and ``/readyz`` answer without credentials, so kubelet probes
  and a container HEALTHCHECK need no secret in the pod spec. They carry no
  metric data; without credentials ``/readyz`` answers only ``ready`` or
  ``not ready`` (the list of failing workers needs credentials). Every other
  path (``/metrics``, the status page) needs them.
* The answer of a bcrypt check is cached for :data:`AUTH_CACHE_SECONDS` (keyed
  by a SHA-256 of user, password and hash, never the password itself), so a
  Prometheus scraping every 15 s costs one bcrypt run per minute, not one per
  scrape, and a client repeating a wrong password costs one run per minute too.
  At most :data:`AUTH_MAX_CHECKS` bcrypt checks run at once with
  :data:`AUTH_MAX_WAITING` queued; more get HTTP 429 at once
  (``mlsidecar_http_rejected_total{reason="auth_busy"}``), so password guessing
  cannot take the box's cores. Unknown users are checked against a dummy hash,
  so the answer time does not tell which user names exist.
* Settings Python's ``ssl`` module cannot honour (``client_auth_type``
  ``RequestClientCert`` / ``RequireAnyClientCert``, ``curve_preferences``,
  ``client_allowed_sans``, inline ``cert``/``key``/``client_ca``) are refused
  with an error naming the key, rather than silently weakened.
* ``http_server_config.http2`` is accepted and has no effect (HTTP/1.1 only).

The file is read when the server starts and again on SIGHUP.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import hashlib
import os
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .section import ConfigError, Section

AUTH_CACHE_SECONDS = 60.0
AUTH_CACHE_SIZE = 1024
AUTH_MAX_CHECKS = 1  # bcrypt checks running at once (one core at most)
AUTH_MAX_WAITING = 8  # more checks queued behind them; beyond: 429 at once
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
BCRYPT_MAX_BYTES = 72  # bcrypt uses the first 72 bytes, as htpasswd and Go's bcrypt do

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

CLIENT_AUTH = {
    "": ssl.CERT_NONE,
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
CLIENT_AUTH_UNSUPPORTED = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")

# Go's crypto/tls names (what exporter-toolkit accepts) -> OpenSSL names.
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
}

ALLOWED_HEADERS = ("Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options",
                   "X-XSS-Protection", "Content-Security-Policy")

TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version",
            "cipher_suites", "prefer_server_cipher_suites", "curve_preferences", "client_allowed_sans",
            "cert", "key", "client_ca"}
TLS_UNSUPPORTED = {
    "curve_preferences": "not supported by mlsidecar (Python's ssl cannot restrict curves); remove it",
    "client_allowed_sans": "not supported by mlsidecar; remove it, or use a client CA that only signs "
                           "the allowed clients",
    "cert": "inline certificates are not supported by mlsidecar; use cert_file",
    "key": "inline keys are not supported by mlsidecar; use key_file",
    "client_ca": "inline CAs are not supported by mlsidecar; use client_ca_file",
}

# bcrypt of a random string, used to spend the same time on unknown users.
_DUMMY_HASH = b"$2b$10$okOtysiuotrtXfml80ooTelfImBCj.3S4yj/PCDDfz74Sd5xedIni"


@dataclass(frozen=True)
class TLSSettings:
    cert_file: str
    key_file: str
    client_auth: ssl.VerifyMode = ssl.CERT_NONE
    client_ca_file: str = ""
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion | None = None
    ciphers: tuple[str, ...] = ()
    prefer_server_ciphers: bool = False


@dataclass(frozen=True)
class WebConfig:
    """A loaded web config; :func:`load` builds it, the server asks it for TLS and middlewares."""

    path: str = "(none)"
    tls: TLSSettings | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A server context for the configured TLS, or None when the port is plain HTTP."""
        if self.tls is None:
            return None
        t = self.tls
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(t.cert_file, t.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(self.path, "tls_server_config.cert_file",
                              f"cannot load certificate/key {t.cert_file} / {t.key_file}: {exc}") from None
        ctx.minimum_version = t.min_version
        if t.max_version is not None:
            ctx.maximum_version = t.max_version
        if t.ciphers:
            try:
                ctx.set_ciphers(":".join(t.ciphers))
            except ssl.SSLError as exc:
                raise ConfigError(self.path, "tls_server_config.cipher_suites", str(exc)) from None
        if t.prefer_server_ciphers:
            ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        ctx.verify_mode = t.client_auth
        if t.client_ca_file:
            try:
                ctx.load_verify_locations(cafile=t.client_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(self.path, "tls_server_config.client_ca_file",
                                  f"cannot load {t.client_ca_file}: {exc}") from None
        return ctx

    def middlewares(self, on_reject=None) -> list:
        """aiohttp middlewares: basic auth (when users are configured) and response headers.

        ``on_reject(reason)`` is called for each request refused by basic auth."""
        out = []
        if self.headers:  # outermost, so 401 answers carry the headers too
            out.append(_headers_middleware(dict(self.headers)))
        if self.users:
            auth = BasicAuth(self.users)
            auth.on_reject = on_reject
            out.append(auth.middleware)
        return out


# --- loading ------------------------------------------------------------------------
def load(path: str) -> WebConfig:
    """Read and check a web config file; a bad one raises ConfigError naming the key."""
    import yaml

    try:
        with open(path, "rb") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, "", f"not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, "", "must be a YAML mapping")
    _unknown(path, "", data, {"tls_server_config", "http_server_config", "basic_auth_users"})
    base = os.path.dirname(os.path.abspath(path))
    tls = _tls(path, base, data.get("tls_server_config"))
    users = _users(path, data.get("basic_auth_users"))
    headers = _http(path, data.get("http_server_config"))
    return WebConfig(path=path, tls=tls, users=users, headers=headers)


def _unknown(path: str, prefix: str, data: dict[Any, Any], known: set[str]) -> None:
    """Refuse keys outside ``known``, as every config table is checked (mlsidecar/section.py)."""
    table = Section(path, prefix.rstrip("."), data)
    table.used |= known
    table.finish()


def _str(path: str, key: str, v: Any) -> str:
    if v is None:
        return ""
    if not isinstance(v, str):
        raise ConfigError(path, key, f"must be a string, got {type(v).__name__} {v!r}")
    return v


def _tls(path: str, base: str, t: Any) -> TLSSettings | None:
    p = "tls_server_config."
    if t is None:
        return None
    if not isinstance(t, dict):
        raise ConfigError(path, "tls_server_config", "must be a mapping")
    _unknown(path, p, t, TLS_KEYS)
    for k, why in TLS_UNSUPPORTED.items():
        if t.get(k) not in (None, "", []):
            raise ConfigError(path, p + k, why)
    cert = _str(path, p + "cert_file", t.get("cert_file"))
    key = _str(path, p + "key_file", t.get("key_file"))
    ca = _str(path, p + "client_ca_file", t.get("client_ca_file"))
    auth = _str(path, p + "client_auth_type", t.get("client_auth_type"))
    if not (cert or key or ca or auth):
        return None  # an empty tls_server_config means plain HTTP, as in exporter-toolkit
    if not cert:
        raise ConfigError(path, p + "cert_file", "missing (key_file is set)" if key else "missing")
    if not key:
        raise ConfigError(path, p + "key_file", "missing (cert_file is set)")
    if auth in CLIENT_AUTH_UNSUPPORTED:
        raise ConfigError(path, p + "client_auth_type",
                          f"{auth} (a client certificate that is not verified) is not supported by "
                          "mlsidecar; use VerifyClientCertIfGiven or RequireAndVerifyClientCert")
    if auth not in CLIENT_AUTH:
        raise ConfigError(path, p + "client_auth_type",
                          f"{auth!r} is not one of {', '.join(k for k in CLIENT_AUTH if k)}")
    mode = CLIENT_AUTH[auth]
    if ca and mode == ssl.CERT_NONE:
        raise ConfigError(path, p + "client_auth_type",
                          "client_ca_file is set without a client auth policy "
                          "(set VerifyClientCertIfGiven or RequireAndVerifyClientCert)")
    if mode != ssl.CERT_NONE and not ca:
        raise ConfigError(path, p + "client_ca_file", f"required with client_auth_type {auth}")

    def resolve(key_name: str, f: str) -> str:
        if not f:
            return ""
        full = f if os.path.isabs(f) else os.path.join(base, f)
        if not os.path.isfile(full):
            raise ConfigError(path, p + key_name, f"{full}: file not found")
        return full

    versions = {}
    for name in ("min_version", "max_version"):
        v = _str(path, p + name, t.get(name))
        if v and v not in TLS_VERSIONS:
            raise ConfigError(path, p + name, f"{v!r} is not one of {', '.join(TLS_VERSIONS)}")
        versions[name] = TLS_VERSIONS.get(v)
    lo = versions["min_version"] or ssl.TLSVersion.TLSv1_2
    hi = versions["max_version"]
    if hi is not None and hi < lo:
        raise ConfigError(path, p + "max_version", "is lower than min_version")
    suites = t.get("cipher_suites") or []
    if not isinstance(suites, list):
        raise ConfigError(path, p + "cipher_suites", "must be a list")
    ciphers = []
    for i, s in enumerate(suites):
        if s not in CIPHER_SUITES:
            raise ConfigError(path, f"{p}cipher_suites[{i}]", f"unknown cipher suite {s!r}")
        ciphers.append(CIPHER_SUITES[s])
    prefer = t.get("prefer_server_cipher_suites", False)
    if prefer is None:
        prefer = False
    if not isinstance(prefer, bool):
        raise ConfigError(path, p + "prefer_server_cipher_suites", "must be true or false")
    return TLSSettings(cert_file=resolve("cert_file", cert), key_file=resolve("key_file", key),
                       client_auth=mode, client_ca_file=resolve("client_ca_file", ca),
                       min_version=lo, max_version=hi, ciphers=tuple(ciphers),
                       prefer_server_ciphers=prefer)


def _users(path: str, users: Any) -> dict[str, bytes]:
    if users is None:
        return {}
    if not isinstance(users, dict):
        raise ConfigError(path, "basic_auth_users", "must be a mapping of user name to bcrypt hash")
    out = {}
    for user, h in users.items():
        key = f"basic_auth_users.{user}"
        if not isinstance(user, str) or not user or ":" in user:
            raise ConfigError(path, key, "user names must be non-empty strings without ':'")
        if not isinstance(h, str) or not h.startswith(("$2a$", "$2b$", "$2y$")) or len(h) != 60:
            raise ConfigError(path, key, "must be a bcrypt hash ($2y$..., 60 characters; "
                                         "make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')")
        out[user] = h.encode()
    return out


def _http(path: str, h: Any) -> dict[str, str]:
    p = "http_server_config."
    if h is None:
        return {}
    if not isinstance(h, dict):
        raise ConfigError(path, "http_server_config", "must be a mapping")
    _unknown(path, p, h, {"http2", "headers"})
    if "http2" in h and not isinstance(h["http2"], (bool, type(None))):
        raise ConfigError(path, p + "http2", "must be true or false")
    headers = h.get("headers") or {}
    if not isinstance(headers, dict):
        raise ConfigError(path, p + "headers", "must be a mapping")
    allowed = {a.lower(): a for a in ALLOWED_HEADERS}
    out = {}
    for name, value in headers.items():
        if str(name).lower() not in allowed:
            raise ConfigError(path, f"{p}headers.{name}",
                              f"not an allowed header (allowed: {', '.join(ALLOWED_HEADERS)})")
        out[allowed[str(name).lower()]] = _str(path, f"{p}headers.{name}", value)
    return out


# --- basic auth -----------------------------------------------------------------------
def _check_bcrypt(password: bytes, hashed: bytes) -> bool:
    import bcrypt

    try:
        return bcrypt.checkpw(password[:BCRYPT_MAX_BYTES], hashed)
    except ValueError:
        return False


class AuthBusy(Exception):
    """Too many credential checks are already running or waiting: answer 429, spend nothing."""


class BasicAuth:
    """HTTP basic auth against bcrypt hashes, with a bounded cost per client.

    Every check's answer, good or bad, is cached for ``ttl`` seconds under a
    SHA-256 of user, password and hash, so the same credentials cost one
    bcrypt run per ``ttl`` however often they are sent. Checks that do need
    bcrypt run on at most ``max_checks`` threads with at most ``max_waiting``
    more queued; beyond that the request is refused at once (:class:`AuthBusy`,
    HTTP 429), so clients guessing passwords cannot take more than
    ``max_checks`` cores, and a Prometheus whose answer is cached is never slowed.
    """

    def __init__(self, users: dict[str, bytes], ttl: float = AUTH_CACHE_SECONDS,
                 size: int = AUTH_CACHE_SIZE, clock=time.monotonic, check=_check_bcrypt,
                 max_checks: int = AUTH_MAX_CHECKS, max_waiting: int = AUTH_MAX_WAITING):
        self.users = dict(users)
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self.check = check
        self.max_checks = max_checks
        self.max_waiting = max_waiting
        # Good and bad answers apart, so a flood of wrong guesses cannot push out the good ones.
        self._cache: OrderedDict[bytes, float] = OrderedDict()
        self._failed: OrderedDict[bytes, float] = OrderedDict()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._in_checks = 0
        self.bcrypt_runs = 0
        self.on_reject = None  # called with a reason ("auth_busy", "auth_failed")

    @staticmethod
    def parse_header(value: str) -> tuple[str, bytes] | None:
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "basic" or not token.strip():
            return None
        try:
            raw = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        user, sep, password = raw.partition(b":")
        if not sep:
            return None
        try:
            return user.decode("utf-8"), password
        except UnicodeDecodeError:
            return None

    def _cache_key(self, user: str, password: bytes, hashed: bytes) -> bytes:
        return hashlib.sha256(user.encode() + b"\0" + hashed + b"\0" + password).digest()

    async def verify(self, user: str, password: bytes) -> bool:
        """True for good credentials; raises :class:`AuthBusy` when no check can be afforded now."""
        hashed = self.users.get(user)
        known = hashed is not None
        if hashed is None:
            hashed = _DUMMY_HASH
        key = self._cache_key(user, password, hashed)
        now = self.clock()
        for cache, answer in ((self._cache, True), (self._failed, False)):
            expires = cache.get(key)
            if expires is not None:
                if expires > now:
                    cache.move_to_end(key)
                    return answer
                del cache[key]
        if self._in_checks >= self.max_checks + self.max_waiting:
            raise AuthBusy()
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.max_checks, thread_name_prefix="bcrypt")
        self._in_checks += 1
        try:
            self.bcrypt_runs += 1
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(self._pool, self.check, password, hashed) and known
        finally:
            self._in_checks -= 1
        cache = self._cache if ok else self._failed
        cache[key] = self.clock() + self.ttl
        while len(cache) > self.size:
            cache.popitem(last=False)
        return ok

    async def authorized(self, request) -> bool:
        header = request.headers.get("Authorization")
        if not header:
            return False
        creds = self.parse_header(header)
        if creds is None:
            return False
        return await self.verify(*creds)

    @property
    def middleware(self):
        from aiohttp import web

        @web.middleware
        async def basic_auth(request, handler):
            if request.path in OPEN_PATHS:
                if request.path == "/readyz" and not await self._authorized_quiet(request):
                    resp = await handler(request)
                    text = "ready\n" if resp.status == 200 else "not ready\n"
                    return web.Response(status=resp.status, text=text)
                return await handler(request)
            try:
                ok = await self.authorized(request)
            except AuthBusy:
                self._rejected("auth_busy")
                return web.Response(status=429, text="Too many credential checks in progress; retry\n",
                                    headers={"Retry-After": "1"})
            if ok:
                return await handler(request)
            self._rejected("auth_failed")
            return web.Response(status=401, text="Unauthorized\n",
                                headers={"WWW-Authenticate": 'Basic realm="mlsidecar", charset="UTF-8"'})

        return basic_auth

    async def _authorized_quiet(self, request) -> bool:
        # Probes send no credentials; only spend a bcrypt run when some were sent.
        if not request.headers.get("Authorization"):
            return False
        try:
            return await self.authorized(request)
        except AuthBusy:
            return False

    def _rejected(self, reason: str) -> None:
        if self.on_reject is not None:
            self.on_reject(reason)


def _headers_middleware(headers: dict[str, str]):
    from aiohttp import web

    @web.middleware
    async def add_headers(request, handler):
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            for k, v in headers.items():
                exc.headers[k] = v
            raise
        for k, v in headers.items():
            resp.headers[k] = v
        return resp

    return add_headers


def hash_password(password: str, rounds: int = 10) -> str:
    """A bcrypt hash for basic_auth_users (what ``htpasswd -nBC 10`` prints after the colon)."""
    import bcrypt

    return bcrypt.hashpw(password.encode()[:BCRYPT_MAX_BYTES], bcrypt.gensalt(rounds)).decode()


__all__ = ["WebConfig", "TLSSettings", "BasicAuth", "AuthBusy", "load", "hash_password",
           "AUTH_CACHE_SECONDS", "AUTH_MAX_CHECKS", "AUTH_MAX_WAITING", "OPEN_PATHS"]
