"""What routes depend on: the running service's parts, and the owner behind the request's API key."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from .engine import Engine
from .errors import ApiError
from .paths import DataDir
from .settings import ServiceSettings
from .store import Store

COOKIE = "tunelab_key"  # the dashboard's login keeps the key here (HttpOnly, SameSite=Strict)


@dataclass
class Service:
    settings: ServiceSettings
    data: DataDir
    store: Store
    engine: Engine
    keys: dict[str, str]  # API key -> owner
    started_at: int


def get_service(request: Request) -> Service:
    return request.app.state.service


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE)


def owner_for(service: Service, key: str | None) -> str | None:
    if not key:
        return None
    for known, owner in service.keys.items():
        if secrets.compare_digest(known.encode(), key.encode()):  # same time whatever the key
            return owner
    return None


def get_owner(request: Request, service: Annotated[Service, Depends(get_service)]) -> str:
    key = presented_key(request)
    owner = owner_for(service, key)
    if owner is None:
        message = (
            "Incorrect API key provided."
            if key
            else "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
        )
        raise ApiError(401, message, code="invalid_api_key")
    return owner


ServiceDep = Annotated[Service, Depends(get_service)]
Owner = Annotated[str, Depends(get_owner)]
