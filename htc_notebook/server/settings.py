"""What a server of the HTC REST API is configured with: who owns it, the URL its clients reach
it at, and how much a request may send.

>>> ServerSettings(public_url="http://127.0.0.1:8750/").origin
'http://127.0.0.1:8750'
>>> ServerSettings(max_body_mib=0)
Traceback (most recent call last):
...
htc_notebook.errors.ConfigError: max_body_mib = 0 is not allowed: a whole number from 1 to 1024 (MiB)
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass

from htc_notebook.errors import ConfigError

MAX_BODY_MIB = 4  # a batch request is a few KiB: its definition is shared by every job of the batch
MAX_DEPTH = 32  # nesting of a JSON body (the deepest valid body, a batch's claims, is 5)
ENV_PUBLIC_URL, ENV_MAX_BODY = "HTC_PUBLIC_URL", "HTC_MAX_BODY_MIB"


@dataclass(frozen=True)
class ServerSettings:
    """`owner`: the API user who acts as the data root's owner (`htc serve --owner`; None: nobody
    over the API. In Jupyter the owner is its logged-in user, never an API user). `public_url`:
    where clients reach the server (`scheme://host[:port]`): `next` links are built from it, never
    from the request's Host header. `max_body_mib`: bodies above it are refused (413).
    `unconfined`: what is off where this server's jobs run unconfined and API users were not allowed
    in anyway (`--allow-unconfined`, runtime/confinement.py): API users but `owner` are then refused
    (403), keys made while it runs as those there at its start."""

    owner: str | None = None
    public_url: str | None = None
    max_body_mib: int = MAX_BODY_MIB
    max_depth: int = MAX_DEPTH
    unconfined: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_body_mib, bool) or not isinstance(self.max_body_mib, int) \
                or not 1 <= self.max_body_mib <= 1024:
            raise ConfigError(f"max_body_mib = {self.max_body_mib!r} is not allowed: "
                              "a whole number from 1 to 1024 (MiB)")
        if self.public_url is not None:
            parts = urllib.parse.urlsplit(self.public_url)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment \
                    or parts.path.strip("/"):
                raise ConfigError(f"public_url = {self.public_url!r} is not allowed: scheme://host[:port] "
                                  "(http or https, no path), e.g. http://login1.example.org:8750")
        if self.owner is not None:
            from htc_notebook.spec import check_name

            check_name(self.owner, field="owner")

    @property
    def max_body_bytes(self) -> int:
        return self.max_body_mib << 20

    @property
    def origin(self) -> str | None:
        """`public_url` as `scheme://host[:port]`, or None."""
        if self.public_url is None:
            return None
        parts = urllib.parse.urlsplit(self.public_url)
        return f"{parts.scheme}://{parts.netloc}"

    @classmethod
    def from_env(cls, public_url: str | None = None) -> ServerSettings:
        """Settings of the Jupyter extension: `$HTC_PUBLIC_URL` (else `public_url`, the server's own)
        and `$HTC_MAX_BODY_MIB`."""
        mib = os.environ.get(ENV_MAX_BODY)
        if mib is not None and not mib.isdigit():
            raise ConfigError(f"{ENV_MAX_BODY} = {mib!r} is not allowed: a whole number from 1 to 1024 (MiB)")
        return cls(public_url=os.environ.get(ENV_PUBLIC_URL) or public_url,
                   max_body_mib=MAX_BODY_MIB if mib is None else int(mib))
