"""What the routes work with, as FastAPI dependencies: ``backend: BackendDep``, ``principal: PrincipalDep``...

:func:`htc_emulator.app.create_app` keeps the emulator's parts (:class:`Services`)
on the application; the functions here are the only readers of that state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from ..auth import Principal, TokenAuthority
from ..models import Backend
from ..project_images import ProjectImages
from ..storage import Storage
from .guard import authenticate


@dataclass(frozen=True)
class Services:
    """The emulator's parts the routes use."""

    backend: Backend
    tokens: TokenAuthority
    storage: Storage
    images: ProjectImages


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_backend(request: Request) -> Backend:
    return get_services(request).backend


def get_tokens(request: Request) -> TokenAuthority:
    return get_services(request).tokens


def get_storage(request: Request) -> Storage:
    return get_services(request).storage


def get_images(request: Request) -> ProjectImages:
    return get_services(request).images


BackendDep = Annotated[Backend, Depends(get_backend)]
TokensDep = Annotated[TokenAuthority, Depends(get_tokens)]
StorageDep = Annotated[Storage, Depends(get_storage)]
ImagesDep = Annotated[ProjectImages, Depends(get_images)]


def get_principal(request: Request, tokens: TokensDep, backend: BackendDep) -> Principal:
    """Who is calling: what the bearer-check middleware found, or, in an app built without it, checked here."""
    found = getattr(request.state, "principal", None)
    if found is not None:
        return found
    return authenticate(tokens, backend, request.headers.get("authorization"), request.method, request.scope["path"])


PrincipalDep = Annotated[Principal, Depends(get_principal)]
