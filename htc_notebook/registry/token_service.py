"""The registry's token service (docker's token authentication): `GET /token` with HTTP Basic
credentials (user = project id, password = the project's registry password) answers a signed
token granting that project's own repositories only (`credentials.grant`).

Run by `htc registry up` as its own process next to the registry:

    python -m htc_notebook.registry.token_service --keys DIR --port 5051 [--listen 0.0.0.0]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import datetime as dt
import json

from tornado import web

from htc_notebook.registry.credentials import SERVICE, TOKEN_SECONDS, RegistryKeys, grant
from htc_notebook.storage.layout import NAME_PATTERN, check_name
from htc_notebook.errors import StorageAccessDenied


class TokenHandler(web.RequestHandler):
    def initialize(self, keys: RegistryKeys) -> None:
        self.keys = keys

    def _fail(self, status: int, message: str) -> None:
        self.set_status(status)
        if status == 401:
            self.set_header("WWW-Authenticate", 'Basic realm="htc_notebook registry"')
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"errors": [{"code": "UNAUTHORIZED" if status == 401 else "DENIED",
                                            "message": message}]}))

    def get(self) -> None:
        scheme, _, value = self.request.headers.get("Authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        if scheme.lower() != "basic" or not user:
            return self._fail(401, "log in with your project id and its registry password "
                                   "(GET /htc/projects/{projectId}/container-registry/token)")
        try:
            check_name("project", user)
        except StorageAccessDenied:
            return self._fail(401, f"user {user!r} is not a project id ({NAME_PATTERN})")
        if not self.keys.check(user, password):
            return self._fail(401, f"wrong registry password for project {user!r}")
        if self.get_query_argument("service", SERVICE) != SERVICE:
            return self._fail(400, f"this token service serves {SERVICE!r}")
        scopes = [s for arg in self.get_query_arguments("scope") for s in arg.split(" ") if s]
        access = [a for s in scopes for a in grant(user, s)]
        token = self.keys.token(user, access)
        now = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"token": token, "access_token": token, "expires_in": TOKEN_SECONDS, "issued_at": now}))


class Health(web.RequestHandler):
    def get(self) -> None:
        self.finish({"ok": True})


def make_app(keys: RegistryKeys) -> web.Application:
    return web.Application([("/token", TokenHandler, {"keys": keys}), ("/healthz", Health)])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--listen", default="0.0.0.0")
    args = ap.parse_args(argv)
    app = make_app(RegistryKeys(args.keys))

    async def serve() -> None:
        app.listen(args.port, args.listen)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
