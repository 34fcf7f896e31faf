"""API keys, bearer tokens and project membership for the HTC REST API.

An API key (`htc keys create USER`) is shown once and stored hashed; it buys bearer tokens
(`GET /auth/token`, a JWT signed RS256 by this server's key, valid 6 hours) naming the user
and the key. Every request re-checks that the key is not revoked and is its user's, so revoking
a key ends its tokens at once. Grants are per key: a key reaches the projects granted to it
(`--project P`) and those created with its tokens, not the other projects of its user; a
project's members (users) hold it against others. Everything lives in `<data root>/server/`:
`auth.db` (SQLite) and the signing key (0600).

>>> auth = Auth(tmp)                                        # doctest: +SKIP
>>> key = auth.create_key("ada", projects=["md"])           # doctest: +SKIP
>>> token = auth.issue_token(key)["tokenValue"]             # doctest: +SKIP
>>> auth.verify(token)["sub"]                               # doctest: +SKIP
'ada'
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from htc_notebook.errors import ConfigError, HTCError

TOKEN_SECONDS = 6 * 3600
ALGORITHM = "RS256"
ISSUER = "htc_notebook"
_DDL = (
    """CREATE TABLE IF NOT EXISTS keys (
        id TEXT PRIMARY KEY, user TEXT NOT NULL, hash TEXT NOT NULL, created REAL NOT NULL, revoked REAL)""",
    """CREATE TABLE IF NOT EXISTS members (
        user TEXT NOT NULL, project TEXT NOT NULL, PRIMARY KEY (user, project))""",
    """CREATE TABLE IF NOT EXISTS grants (
        key TEXT NOT NULL, project TEXT NOT NULL, PRIMARY KEY (key, project))""",
)


class Unauthorized(HTCError):
    """No, a malformed, forged, expired or revoked credential (HTTP 401)."""


class Caller(NamedTuple):
    """Who makes a request, as the credential says. API users (`key`: the id of the key their token
    came from) and the data root's owner (`owner`: Jupyter's logged-in user, or the API user
    `htc serve --owner` names) are apart: an API user named like the owner is not the owner."""

    name: str
    owner: bool = False
    key: str | None = None


class Auth:
    """Keys, tokens and memberships under one data root."""

    def __init__(self, root: str | os.PathLike):
        self.dir = Path(root) / "server"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._local = threading.local()
        con = self._db()
        with con:
            con.execute("BEGIN IMMEDIATE")
            per_user = con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'grants'"
                                   ).fetchone() is None
            for stmt in _DDL:
                con.execute(stmt)
            if per_user:  # an auth.db from before grants were per key: each key keeps what its user had
                con.execute("INSERT OR IGNORE INTO grants (key, project) "
                            "SELECT k.id, m.project FROM keys k JOIN members m ON m.user = k.user")
        self._private = self._load_or_create_key()
        self.public_key = self._private.public_key()
        self.kid = hashlib.sha256(self.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()[:16]

    def _db(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = sqlite3.connect(self.dir / "auth.db", timeout=30)
            con.execute("PRAGMA journal_mode = WAL")
        return con

    def _load_or_create_key(self) -> rsa.RSAPrivateKey:
        path = self.dir / "jwt-signing-key.pem"
        if path.exists():
            return _rsa_key(path)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        try:
            os.link(tmp, path)  # first writer wins if two servers start at once
        except FileExistsError:
            tmp.unlink()
            return _rsa_key(path)
        tmp.unlink()
        return key

    # -- API keys -------------------------------------------------------------------------
    def create_key(self, user: str, projects: tuple[str, ...] | list[str] = ()) -> str:
        """A new API key for `user` (shown once; only its hash is kept), granted `projects` (the user
        becomes their member: a project not yet created is reserved for them)."""
        _check_user(user)
        key_id, secret = uuid.uuid4().hex[:12], secrets.token_urlsafe(32)
        with self._db() as con:
            con.execute("INSERT INTO keys (id, user, hash, created) VALUES (?, ?, ?, ?)",
                        (key_id, user, _hash(secret), time.time()))
            con.executemany("INSERT OR IGNORE INTO members (user, project) VALUES (?, ?)",
                            [(user, p) for p in projects])
            con.executemany("INSERT OR IGNORE INTO grants (key, project) VALUES (?, ?)",
                            [(key_id, p) for p in projects])
        return f"htc_{key_id}_{secret}"

    def revoke_key(self, key_id: str) -> bool:
        with self._db() as con:
            return con.execute("UPDATE keys SET revoked = ? WHERE id = ? AND revoked IS NULL",
                               (time.time(), key_id)).rowcount == 1

    def keys(self) -> list[dict[str, Any]]:
        rows = self._db().execute("SELECT id, user, created, revoked FROM keys ORDER BY created").fetchall()
        return [{"id": i, "user": u, "created": c, "revoked": r} for i, u, c, r in rows]

    def _check_key(self, api_key: str) -> tuple[str, str]:
        """(key id, user) for a valid, unrevoked key; Unauthorized otherwise."""
        parts = api_key.split("_", 2) if isinstance(api_key, str) else []
        if len(parts) != 3 or parts[0] != "htc":
            raise Unauthorized("not an htc_notebook API key (create one with `htc keys create USER`)")
        row = self._db().execute("SELECT user, hash, revoked FROM keys WHERE id = ?", (parts[1],)).fetchone()
        if row is None or not hmac.compare_digest(row[1], _hash(parts[2])):
            raise Unauthorized("unknown API key")
        if row[2] is not None:
            raise Unauthorized("this API key was revoked")
        return parts[1], row[0]

    def whoami(self, api_key: str) -> dict[str, Any]:
        """Who a valid API key belongs to: `{"username", "keyId", "projects"}` (GET /auth/whoami)."""
        key_id, user = self._check_key(api_key)
        projects = [p for (p,) in self._db().execute("SELECT project FROM grants WHERE key = ? ORDER BY project",
                                                      (key_id,)).fetchall()]
        return {"username": user, "keyId": key_id, "projects": projects}

    # -- bearer tokens ---------------------------------------------------------------------
    def issue_token(self, api_key: str) -> dict[str, Any]:
        """`{"tokenValue", "expiresIn", "expiresAt"}` for a valid API key (expiresIn in seconds: what
        HTC API clients read to renew it)."""
        key_id, user = self._check_key(api_key)
        now = int(time.time())
        claims = {"sub": user, "key": key_id, "iss": ISSUER, "iat": now, "exp": now + TOKEN_SECONDS,
                  "jti": uuid.uuid4().hex}
        token = jwt.encode(claims, self._private, algorithm=ALGORITHM, headers={"kid": self.kid})
        expires = dt.datetime.fromtimestamp(now + TOKEN_SECONDS, dt.timezone.utc)
        return {"tokenValue": token, "expiresIn": TOKEN_SECONDS,
                "expiresAt": expires.isoformat().replace("+00:00", "Z")}

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid token whose key is not revoked; Unauthorized otherwise."""
        try:
            claims = jwt.decode(token, self.public_key, algorithms=[ALGORITHM], issuer=ISSUER,
                                options={"require": ["exp", "iat", "sub", "key"]})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the bearer token expired: get a new one from /auth/token") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid bearer token ({exc})") from None
        row = self._db().execute("SELECT user, revoked FROM keys WHERE id = ?", (claims["key"],)).fetchone()
        if row is None or row[1] is not None:
            raise Unauthorized("the API key behind this token was revoked")
        if not hmac.compare_digest(str(claims["sub"]), row[0]):  # a token speaks for its key's user only
            raise Unauthorized("the bearer token's subject is not the user of its API key")
        return claims

    def jwks(self) -> dict[str, Any]:
        """The public key as a JSON Web Key Set."""
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.public_key, as_dict=True)
        return {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": ALGORITHM}]}

    # -- membership ------------------------------------------------------------------------
    def claim(self, user: str, project: str, exists: bool, key: str | None = None) -> bool:
        """Make `user` a member of `project` (and grant it to `key`) if nobody else holds it, in one
        write transaction (so of users claiming a project at once, across threads and processes,
        exactly one wins). True if `user` (through `key`, if given) now holds it: granted before
        (`htc keys create USER --project P` reserves P for USER), or the first to claim a project
        that has no members and does not `exist` yet. Another key of a member is refused: a key
        reaches only what was granted to it."""
        con = self._db()
        with con:
            con.execute("BEGIN IMMEDIATE")
            members = {u for (u,) in con.execute("SELECT user FROM members WHERE project = ?", (project,))}
            if user in members:
                return key is None or self.key_reaches(key, project)
            if members or exists:
                return False
            con.execute("INSERT INTO members (user, project) VALUES (?, ?)", (user, project))
            if key is not None:
                con.execute("INSERT INTO grants (key, project) VALUES (?, ?)", (key, project))
            return True

    def key_reaches(self, key: str, project: str) -> bool:
        """Is `project` granted to key `key` (its id)?"""
        return self._db().execute("SELECT 1 FROM grants WHERE key = ? AND project = ?",
                                  (key, project)).fetchone() is not None

    def is_member(self, user: str, project: str) -> bool:
        """Is `user` a member of `project` (through any of their keys)?"""
        return self._db().execute("SELECT 1 FROM members WHERE user = ? AND project = ?",
                                  (user, project)).fetchone() is not None


def _rsa_key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):  # tokens are signed RS256
        raise ConfigError("holds no RSA private key (the server's token signing key)", file=str(path))
    return key


def _hash(secret: str) -> str:
    """Keys are 256-bit random secrets: one SHA-256 is enough (no password stretching needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _check_user(user: object) -> None:
    from htc_notebook.spec import check_name

    check_name(user, field="user")
