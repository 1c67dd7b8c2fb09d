"""JWT (HS256, shared secret) on every user route: 401 without a valid token, 403 when the
token's subject is not the user in the path."""

from __future__ import annotations

from typing import Annotated

import jwt
from fastapi import Depends, HTTPException, Path, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .config import get_settings

# auto_error=False: we raise our own 401 (FastAPI's default would be 403 for a missing header).
_bearer = HTTPBearer(auto_error=False)

UserIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")]


def _unauthorized(msg: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, msg, headers={"WWW-Authenticate": "Bearer"})


def current_user(
    user_id: UserIdPath,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise _unauthorized("missing bearer token")
    secret = get_settings().jwt_secret
    if not secret:  # refuse rather than accept tokens signed with an empty key
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "authentication is not configured")
    try:
        claims = jwt.decode(
            creds.credentials, secret, algorithms=["HS256"], options={"require": ["sub"]}, leeway=30
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("token expired") from None
    except jwt.InvalidTokenError:
        raise _unauthorized("invalid token") from None
    if str(claims["sub"]) != user_id:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "token subject does not match user")
    return user_id


CurrentUser = Annotated[str, Depends(current_user)]
