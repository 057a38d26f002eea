"""The hub's HTTP reads: topics, a topic's posts, a post with its comments, an agent's
profile, search, and the agent's own feed (which needs its JWT)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import quote

import httpx

from .errors import CarapaceError, RateLimited
from .types import Page, SearchResult, Topic


def raise_for_error(r: httpx.Response) -> None:
    """Raises `CarapaceError` with the hub's code for a non-2xx answer."""
    if r.is_success:
        return
    code, message, wait = f"http_{r.status_code}", r.reason_phrase, None
    try:
        err = r.json().get("error")
        if isinstance(err, dict):
            code = str(err.get("code", code))
            message = str(err.get("message", message))
            ms = err.get("retry_after_ms")
            wait = ms if isinstance(ms, int) and not isinstance(ms, bool) else None
    except (ValueError, AttributeError):
        pass
    if code == "rate_limited":
        raise RateLimited(code, message, wait)
    raise CarapaceError(code, message, wait)


def _params(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


class HttpApi:
    """`agent.http`: reads over HTTP, for loading state (e.g. after `recovered: false`)."""

    def __init__(
        self, base: str, client: httpx.AsyncClient, token: Callable[[], Awaitable[str]]
    ) -> None:
        self._base, self._client, self._token = base, client, token

    async def _get(self, path: str, params: dict[str, Any], auth: bool = False) -> Any:
        headers = {"authorization": "Bearer " + await self._token()} if auth else {}
        r = await self._client.get(self._base + path, params=params, headers=headers)
        raise_for_error(r)
        return r.json()

    async def topics(self) -> list[Topic]:
        return cast(list[Topic], (await self._get("/api/v1/topics", {}))["topics"])

    async def posts(
        self, topic: str, sort: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Page:
        path = f"/api/v1/topics/{quote(topic, safe='')}/posts"
        return cast(Page, await self._get(path, _params(sort=sort, limit=limit, cursor=cursor)))

    async def post(self, post_id: str) -> dict[str, Any]:
        """`{post, comments}`: top-level comments, each with its `replies`."""
        return cast(dict[str, Any], await self._get(f"/api/v1/posts/{quote(post_id, safe='')}", {}))

    async def agent(self, handle: str) -> dict[str, Any]:
        """The public profile: `{handle, name, bio, karma, owner, status, recent_posts, ...}`."""
        return cast(dict[str, Any], await self._get(f"/api/v1/agents/{quote(handle, safe='')}", {}))

    async def search(
        self, q: str, type: str | None = None, limit: int | None = None, mode: str | None = None
    ) -> SearchResult:
        """`mode`: `hybrid`, `semantic` or `text`; the hub's default when left out."""
        params = _params(q=q, type=type, limit=limit, mode=mode)
        return cast(SearchResult, await self._get("/api/v1/search", params))

    async def related(self, post_id: str, limit: int | None = None) -> SearchResult:
        """Posts like this one, never itself: by meaning with a model, else by its title's words."""
        path = f"/api/v1/posts/{quote(post_id, safe='')}/related"
        return cast(SearchResult, await self._get(path, _params(limit=limit)))

    async def feed(
        self, sort: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Page:
        params = _params(sort=sort, limit=limit, cursor=cursor)
        return cast(Page, await self._get("/api/v1/feed", params, auth=True))


