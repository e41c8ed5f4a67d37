"""A registry token server for tests: what Docker Hub's auth.docker.io does, in little.

CNCF distribution only verifies tokens (``auth: token: ...``); this issues them:
RS256 JWTs signed by a throwaway key whose self-signed certificate is both the
registry's ``rootcertbundle`` and the JWT ``x5c`` header. Rules, like Docker Hub:

* anonymous requests get ``pull`` on repositories under a public prefix, and a
  token with no access for anything else (the registry then answers 401);
* a known user (Basic auth) gets what it asks for; a wrong password is a 401.

Every issued token is appended to a log file, so leak tests can grep for them.
Run as a process: ``python tests/tokenserver.py --listen 127.0.0.1:PORT ...``.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import ipaddress
import json
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

SERVICE = "test-registry"
ISSUER = "test-issuer"


@dataclass(frozen=True)
class Pki:
    key: Path
    cert: Path


def make_pki(directory: Path, *, server_ip: str | None = None) -> Pki:
    """A fresh RSA key and a self-signed certificate for it (valid one day).

    With ``server_ip`` the certificate also names that address (and localhost),
    so it can serve TLS there and be its own trust root in tests.
    """
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    common_name = "wave-grpc test server" if server_ip else "wave-grpc test token signer"
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    if server_ip is not None:
        names = [x509.IPAddress(ipaddress.ip_address(server_ip)), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    pki = Pki(directory / "token-key.pem", directory / "token-cert.pem")
    pki.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pki


def registry_auth_config(realm: str, pki: Pki) -> dict[str, object]:
    """The ``auth:`` section of a distribution config that trusts this server."""
    return {"token": {"realm": realm, "service": SERVICE, "issuer": ISSUER, "rootcertbundle": str(pki.cert)}}


class TokenIssuer:
    def __init__(
        self, pki: Pki, users: dict[str, str], public_prefixes: tuple[str, ...], log_path: Path, expires_in: int
    ) -> None:
        self.key = serialization.load_pem_private_key(pki.key.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(pki.cert.read_bytes())
        self.x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
        self.users = users
        self.public = public_prefixes
        self.log_path = log_path
        self.expires_in = expires_in

    def _account(self, request: web.Request) -> str | None:
        """'' for anonymous, the user for good credentials, None for bad ones."""
        header = request.headers.get("Authorization", "")
        if not header:
            return ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return None
        expected = self.users.get(user)
        return user if expected is not None and secrets.compare_digest(expected, password) else None

    def _access(self, account: str, scopes: list[str]) -> list[dict[str, object]]:
        access: list[dict[str, object]] = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions_text = rest.rpartition(":")
            actions = [a for a in actions_text.split(",") if a]
            if not account:
                public = any(name.startswith(p) for p in self.public)
                actions = [a for a in actions if a == "pull" and public]
            if kind == "repository" and name and actions:
                access.append({"type": kind, "name": name, "actions": actions})
        return access

    async def token(self, request: web.Request) -> web.Response:
        account = self._account(request)
        if account is None:
            body = {"errors": [{"code": "UNAUTHORIZED", "message": "incorrect username or password"}]}
            return web.json_response(body, status=401, headers={"WWW-Authenticate": 'Basic realm="token"'})
        if request.query.get("service") != SERVICE:
            return web.json_response({"errors": [{"code": "DENIED", "message": "unknown service"}]}, status=400)
        now = int(time.time())
        access = self._access(account, request.query.getall("scope", []))
        claims = {
            "iss": ISSUER,
            "sub": account,
            "aud": SERVICE,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        token = jwt.encode(claims, self.key, algorithm="RS256", headers={"x5c": self.x5c})  # type: ignore[arg-type]
        with self.log_path.open("a") as log:
            log.write(json.dumps({"account": account, "access": access, "token": token}) + "\n")
        return web.json_response(
            {
                "token": token,
                "access_token": token,
                "expires_in": self.expires_in,
                "issued_at": datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat(),
            }
        )


def issued_tokens(log_path: Path) -> list[dict[str, object]]:
    if not log_path.exists():
        return []
    return [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--key", required=True, type=Path)
    parser.add_argument("--cert", required=True, type=Path)
    parser.add_argument("--user", action="append", default=[], help="user:password (repeatable)")
    parser.add_argument("--public", action="append", default=[], help="repository prefix anyone may pull")
    parser.add_argument("--log", required=True, type=Path, help="append every issued token here")
    parser.add_argument("--expires-in", type=int, default=300)
    args = parser.parse_args(argv)
    users = dict(u.split(":", 1) for u in args.user)
    issuer = TokenIssuer(Pki(args.key, args.cert), users, tuple(args.public), args.log, args.expires_in)
    app = web.Application()
    app.router.add_get("/token", issuer.token)
    host, port = args.listen.rsplit(":", 1)
    web.run_app(app, host=host, port=int(port), print=None, access_log=None, shutdown_timeout=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
