"""Who may pull and push what in the project registry: per-project passwords and signed tokens.

The registry (CNCF distribution) trusts tokens signed by the toolkit's key (its certificate is
the registry's `rootcertbundle`). A client logs in with its project id as the user name and
the project's registry password (`password(project)`, what `GET .../container-registry/token`
answers); the token service (`token_service.py`) grants it pull and push on repositories
`<project>/...` only, and never the catalog, so the registry itself refuses another project's
images. Keys live in `<data root>/registry/keys/` (0600).

>>> grant("md", "repository:md/lammps:pull,push")
[{'type': 'repository', 'name': 'md/lammps', 'actions': ['pull', 'push']}]
>>> grant("md", "repository:cfd/solver:pull"), grant("md", "registry:catalog:*")
([], [])
>>> namespace("md"), namespace("MD_Runs")
('md', 'md-runs-038200e9')
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from htc_notebook.errors import ConfigError

SERVICE = "htc-registry"
ISSUER = "htc_notebook"
TOKEN_SECONDS = 300
ACTIONS = ("pull", "push")


# one component of an OCI repository name (the distribution spec): lowercase, separators inside
OCI_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*$")


def namespace(project: str) -> str:
    """The project's namespace in the registry: its id if that is a valid OCI name component, else
    a lowercase form of it with a short hash (project ids may hold capitals; OCI names may not)."""
    if OCI_COMPONENT.match(project):
        return project
    base = re.sub(r"[^a-z0-9]+", "-", project.lower()).strip("-") or "project"
    return f"{base}-{hashlib.sha256(project.encode()).hexdigest()[:8]}"


def grant(project: str, scope: str) -> list[dict[str, Any]]:
    """What a client of `project` gets of one requested `scope` (`repository:<name>:<actions>`):
    the actions it may have on a repository under its namespace, nothing else."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if kind != "repository" or not name.startswith(f"{namespace(project)}/") or ".." in name:
        return []
    allowed = [a for a in actions.split(",") if a in ACTIONS]
    return [{"type": "repository", "name": name, "actions": allowed}] if allowed else []


def _private(path: Path, data: bytes) -> None:
    """Write a secret file 0600, first writer wins (two processes may start at once)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


class RegistryKeys:
    """The signing key and certificate of the registry's tokens, and the secret behind project passwords."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.key_path, self.cert_path, secret = self.dir / "token.key", self.dir / "token.crt", self.dir / "secret"
        if not secret.exists():
            _private(secret, secrets.token_bytes(32))
        self._secret = secret.read_bytes()
        if not self.key_path.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            _private(self.key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
        loaded = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey):  # tokens are signed RS256
            raise ConfigError("holds no RSA private key (the registry's token key)", file=str(self.key_path))
        self._key = loaded
        if not self.cert_path.exists():
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "htc_notebook registry tokens")])
            now = dt.datetime.now(dt.timezone.utc)
            cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                    .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
                    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                    .sign(self._key, hashes.SHA256()))
            _private(self.cert_path, cert.public_bytes(serialization.Encoding.PEM))
            self.cert_path.chmod(0o644)
        self._cert_der = x509.load_pem_x509_certificate(self.cert_path.read_bytes()).public_bytes(
            serialization.Encoding.DER)

    def password(self, project: str) -> str:
        """The project's registry password (its user name is the project id)."""
        digest = hmac.new(self._secret, f"registry-password:{project}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def check(self, project: str, password: str) -> bool:
        return hmac.compare_digest(self.password(project), password)

    def token(self, subject: str, access: Sequence[dict[str, Any]], *, seconds: int = TOKEN_SECONDS) -> str:
        """A registry token for `subject` with `access`, signed (RS256, the certificate in `x5c`)."""
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "iat": now, "nbf": now - 5, "exp": now + seconds,
                  "jti": uuid.uuid4().hex, "access": list(access)}
        return jwt.encode(claims, self._key, algorithm="RS256",
                          headers={"x5c": [base64.b64encode(self._cert_der).decode()]})
