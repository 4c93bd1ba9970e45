"""The dashboard's session: sign in with an API key or a one-time sign-in token (the cookie is
set here, see ``service.signin``), see who is signed in, sign out."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from slimline.schemas import ErrorOut
from slimline.service.deps import EngineDep, TenantDep, tenant_for_key
from slimline.service.errors import Unauthorized
from slimline.service.signin import SigninTokens, clear_session_cookie, set_session_cookie

router = APIRouter(prefix="/v1/session", tags=["session"])
_ERRORS: dict[int | str, dict[str, object]] = {c: {"model": ErrorOut} for c in (401, 422)}


class SigninIn(BaseModel):
    key: str | None = Field(default=None, max_length=200, description="an API key")
    token: str | None = Field(default=None, max_length=200, description="a one-time sign-in token")


class SessionOut(BaseModel):
    tenant: str = Field(description="the signed-in tenant's name")


@router.post("", responses=_ERRORS)
async def sign_in(
    body: SigninIn, request: Request, response: Response, engine: EngineDep
) -> SessionOut:
    """Sign the browser in: sets the HttpOnly, SameSite=Strict session cookie."""
    key = (body.key or "").strip()
    if body.token:
        tokens: SigninTokens = request.app.state.signin_tokens
        key = tokens.redeem(body.token.strip()) or ""
        if not key:
            raise Unauthorized(
                "this sign-in link was already used or has expired; sign in with your API key "
                "(the embedded server keeps it in <data dir>/local.key)",
                field="token",
            )
    if not key:
        raise Unauthorized("enter an API key", field="key")
    tenant = await tenant_for_key(engine, key)
    if tenant is None:
        raise Unauthorized("this API key is not valid (unknown or revoked)", field="key")
    set_session_cookie(request, response, key)
    return SessionOut(tenant=tenant.name)


@router.get("", responses=_ERRORS)
def who(tenant: TenantDep) -> SessionOut:
    return SessionOut(tenant=tenant.name)


@router.delete("", status_code=204)
def sign_out(request: Request) -> Response:
    response = Response(status_code=204)
    clear_session_cookie(request, response)
    return response
