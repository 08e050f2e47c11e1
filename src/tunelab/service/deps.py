"""What routes depend on: the running service's parts, and the owner behind the request's credentials:
an `Authorization: Bearer` API key, or the dashboard's session cookie (a server-side session id, never
the key itself; state changes made with it must come from this server's own pages)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from .engine import Engine
from .errors import ApiError
from .metrics import Metrics
from .paths import DataDir
from .quotas import Quotas
from .security import check_same_origin
from .settings import ServiceSettings
from .store import Store

if TYPE_CHECKING:  # exports.py builds on the use cases, which build on this module
    from .estimates import EstimateTasks
    from .exports import ExportTasks

COOKIE = "tunelab_session"  # HttpOnly, SameSite=Strict; Secure over TLS


@dataclass
class Service:
    settings: ServiceSettings
    data: DataDir
    store: Store
    engine: Engine
    keys: dict[str, str]  # API key -> owner
    started_at: int
    quotas: Quotas
    metrics: Metrics
    operator_keys: list[str]  # for /metrics only
    exports: ExportTasks  # the dashboard's exports running in the background
    estimates: EstimateTasks  # the New job form's dry runs, in child processes


def get_service(request: Request) -> Service:
    return request.app.state.service


def bearer_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


def owner_for(service: Service, key: str | None) -> str | None:
    if not key:
        return None
    for known, owner in service.keys.items():
        if secrets.compare_digest(known.encode(), key.encode()):  # same time whatever the key
            return owner
    return None


def session_owner(service: Service, request: Request) -> str | None:
    """The owner of the request's live session; a key taken off the server ends its sessions too."""
    owner = service.store.session_owner(request.cookies.get(COOKIE, ""))
    return owner if owner in service.keys.values() else None


def credential_owner(request: Request, service: Service) -> str | None:
    """The owner behind the request's credentials, or None. A bearer key, when sent, is the only credential
    looked at."""
    key = bearer_key(request)
    return owner_for(service, key) if key is not None else session_owner(service, request)


def is_operator(service: Service, key: str | None) -> bool:
    """Whether `key` is one of the operator's keys for /metrics (`--metrics-key-file`)."""
    return bool(key) and any(secrets.compare_digest(k.encode(), key.encode()) for k in service.operator_keys)


def credentialed(request: Request) -> bool:
    """Whether the request carries a key or session this server knows (the body guard asks, from headers)."""
    service = get_service(request)
    return credential_owner(request, service) is not None or is_operator(service, bearer_key(request))


def authenticate(request: Request, service: Service) -> str | None:
    """The request's owner, or None; a change made with the session cookie must come from our own pages."""
    owner = credential_owner(request, service)
    if owner is not None and bearer_key(request) is None:
        check_same_origin(request, service.settings.behind_tls_proxy)
    return owner


def get_owner(request: Request, service: Annotated[Service, Depends(get_service)]) -> str:
    owner = authenticate(request, service)
    if owner is None:
        message = (
            "Incorrect API key provided."
            if bearer_key(request)
            else "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
        )
        raise ApiError(401, message, code="invalid_api_key")
    return owner


ServiceDep = Annotated[Service, Depends(get_service)]
Owner = Annotated[str, Depends(get_owner)]
