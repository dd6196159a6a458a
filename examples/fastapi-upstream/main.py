"""The FastAPI tutorial's `/users/me` app with its JWT code deleted.

Behind authgate, the app no longer decodes tokens, checks expiry or keeps a
secret: authgate verified the token and sends the identity in headers that a
client can never set (authgate strips every client-sent X-Auth-* header).
Only authgate must be able to reach this app (bind it to 127.0.0.1 or a
private network), or the headers could be forged by going around authgate.

    pip install fastapi uvicorn pyjwt[crypto]
    uvicorn main:app --host 127.0.0.1 --port 8080

Route in authgate's config.toml:

    [[routes]]
    path = "/"
    upstream = "http://127.0.0.1:8080"
"""

from typing import Annotated, Optional

from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel

app = FastAPI()


class User(BaseModel):
    username: str
    email: Optional[str] = None
    roles: list[str] = []


# Replaces the tutorial's oauth2_scheme, SECRET_KEY, jwt.decode, the
# credentials_exception and get_current_user's token handling.
async def get_current_user(
    x_auth_subject: Annotated[Optional[str], Header()] = None,
    x_auth_email: Annotated[Optional[str], Header()] = None,
    x_auth_roles: Annotated[Optional[str], Header()] = None,
) -> User:
    if not x_auth_subject:
        # Only reachable when the route is `auth = "optional"` or `public`.
        raise HTTPException(status_code=401, detail="not authenticated")
    roles = [r for r in (x_auth_roles or "").split(",") if r]
    return User(username=x_auth_subject, email=x_auth_email, roles=roles)


@app.get("/users/me")
async def read_users_me(current_user: Annotated[User, Depends(get_current_user)]) -> User:
    return current_user


# Optional, defence in depth: with `identity.assertion_header =
# "X-Auth-Assertion"`, authgate also sends a 60-second JWT it signed; verify
# it against authgate's JWKS to prove the request came through authgate.
#
#     import jwt
#     jwks = jwt.PyJWKClient("https://127.0.0.1:8443/.well-known/jwks.json")
#     key = jwks.get_signing_key_from_jwt(assertion).key
#     claims = jwt.decode(assertion, key, algorithms=["ES256"], audience="/", issuer="authgate")
