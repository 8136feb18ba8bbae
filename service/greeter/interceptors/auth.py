"""Bearer-token authentication with optional per-method scopes.

Tokens are kept only as SHA-256 digests and every presented token is compared
with every stored digest in constant time, so neither the token nor which
entry matched leaks through timing; no token is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Iterable

import grpc

from greeter.pipeline import Hooks, Metadata, Method

AUTHORIZATION = "authorization"
BEARER = "bearer "
MAX_TOKEN_BYTES = 4096
_REJECT_MISSING = "missing bearer token: send 'authorization: Bearer <token>'"
_REJECT_INVALID = "invalid bearer token"


class Token:
    __slots__ = ("digest", "scopes")

    def __init__(self, secret: str, scopes: Iterable[str]) -> None:
        self.digest = hashlib.sha256(secret.encode()).digest()
        self.scopes = frozenset(scope.strip("/") for scope in scopes)

    def allows(self, method: Method) -> bool:
        if not self.scopes:
            return True
        return method.service in self.scopes or method.path.strip("/") in self.scopes


class Auth:
    def __init__(self, tokens: Iterable[tuple[str, Iterable[str]]], exempt: Iterable[str]) -> None:
        self._tokens = [Token(secret, scopes) for secret, scopes in tokens]
        self._exempt = frozenset(exempt)

    def bind(self, method: Method) -> Hooks | None:
        if method.service in self._exempt:
            return None
        tokens = self._tokens
        allowed = [token.allows(method) for token in tokens]
        path = method.path

        def before(context: grpc.aio.ServicerContext, metadata: Metadata) -> Awaitable[None] | None:
            presented = None
            for key, value in metadata:
                if key == AUTHORIZATION:
                    presented = value if isinstance(value, str) else value.decode("latin-1")
                    break
            if not presented or presented[: len(BEARER)].lower() != BEARER:
                return context.abort(grpc.StatusCode.UNAUTHENTICATED, _REJECT_MISSING)
            secret = presented[len(BEARER) :].strip().encode("utf-8", "replace")
            digest = hashlib.sha256(secret[:MAX_TOKEN_BYTES]).digest()
            match = -1
            for index, token in enumerate(tokens):  # no early exit: constant time
                if hmac.compare_digest(digest, token.digest) and len(secret) <= MAX_TOKEN_BYTES:
                    match = index
            if match < 0:
                return context.abort(grpc.StatusCode.UNAUTHENTICATED, _REJECT_INVALID)
            if not allowed[match]:
                return context.abort(
                    grpc.StatusCode.PERMISSION_DENIED, f"token is not allowed to call {path}"
                )
            return None

        return Hooks(before=before, reads_metadata=True)
