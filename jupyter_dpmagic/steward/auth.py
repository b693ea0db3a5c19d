"""Who is asking: every request's token is checked with JupyterHub.

Only a *user's* token is accepted (a service's token names no person whose budget could pay), and
it must hold ``access:services!service=<name>``. The hub's answer is cached for a few seconds only,
so a revoked token stops working within seconds.
"""

from __future__ import annotations

import os

from .steward import Analyst

__all__ = ["Refused", "HubIdentity", "CACHE_SECONDS"]

CACHE_SECONDS = 5


class Refused(Exception):
    """The request's token does not identify a user allowed to query the steward."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class HubIdentity:
    """Identifies tokens with the hub (``$JUPYTERHUB_API_URL``, ``$JUPYTERHUB_API_TOKEN``).

    Parameters
    ----------
    service : str, optional
        The steward's service name in the hub (``$JUPYTERHUB_SERVICE_NAME`` by default).
    cache_seconds : float
        How long the hub's answer for a token is kept.
    """

    def __init__(self, service: str | None = None, *, cache_seconds: float = CACHE_SECONDS):
        from jupyterhub.services.auth import HubAuth

        service = service or os.environ.get("JUPYTERHUB_SERVICE_NAME")
        if not service:
            raise RuntimeError("the steward's service name is not known: run it as a JupyterHub service, or pass "
                               "--service-name NAME.")
        self.scope = f"access:services!service={service}"
        self._auth = HubAuth(cache_max_age=int(cache_seconds))

    async def __call__(self, token: str) -> Analyst:
        model = await self._auth.user_for_token(token, sync=False)
        if model is None:
            raise Refused(403, "the hub does not know this token (revoked or expired); restart your server or "
                               "ask for a new token.")
        if model.get("kind", "user") != "user":
            raise Refused(403, "only a user's token can query datasets (every release is charged to a person's "
                               "budget); a service's token cannot.")
        if not self._auth.check_scopes({self.scope}, model):
            raise Refused(403, f"this token lacks the scope {self.scope}. A hub administrator grants it with a role "
                               "and adds it to c.Spawner.server_token_scopes (see docs/hub.md).")
        return Analyst(model["name"], tuple(model.get("groups") or ()))
