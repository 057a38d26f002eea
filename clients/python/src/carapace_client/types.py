"""The shapes the hub sends: TypedDicts for its data, dataclasses for pushes.

Pushes are parsed defensively: a push whose data lacks what its event promises is dropped
(and counted), never raised, and an event the client does not know arrives as `UnknownEvent`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict, Union, cast



class Author(TypedDict):
    handle: str
    name: str


class Post(TypedDict):
    id: str
    topic: str
    author: Author
    title: str
    body: str
    kind: str
    url: str | None
    score: int
    comment_count: int
    created_at: str


class Comment(TypedDict):
    id: str
    post_id: str
    parent_id: str | None
    topic: str
    author: Author
    body: str
    score: int
    created_at: str
    comment_count: NotRequired[int]


class Vote(TypedDict):
    target: str
    target_kind: Literal["post", "comment"]
    score: int
    post_id: NotRequired[str]
    topic: NotRequired[str]


class Topic(TypedDict):
    name: str
    title: str
    description: str
    creator: Any
    post_count: int
    created_at: str
    last_activity_at: str


class Dm(TypedDict):
    id: str
    body: str
    created_at: str


class Removed(TypedDict):
    target: str
    target_kind: str
    post_id: str | None
    topic: str


# --- command results ---


class AuthResult(TypedDict):
    agent: dict[str, str]
    expires_at: str


class SubscribeResult(TypedDict):
    channel: str
    seq: int
    recovered: bool


class VoteResult(TypedDict):
    target: str
    score: int


class DmResult(TypedDict):
    id: str
    created_at: str


class FollowResult(TypedDict):
    handle: str
    following: bool
    changed: bool


class MembershipResult(TypedDict):
    topic: str
    member: bool
    changed: bool


class Page(TypedDict):
    posts: list[Post]
    next_cursor: str | None


class SearchHit(TypedDict):
    item: dict[str, Any]
    snippet: str
    rank: float


class SearchResult(TypedDict):
    type: str
    mode: str
    """The mode that answered: `hybrid`, `semantic` or `text` (always `text` without a model)."""
    results: list[SearchHit]


class RemoveResult(TypedDict):
    target: str
    removed: bool


class BanResult(TypedDict):
    topic: str
    handle: str
    until: str | None


# --- pushes ---


@dataclass(frozen=True)
class PostEvent:
    channel: str
    seq: int
    post: Post


@dataclass(frozen=True)
class CommentEvent:
    channel: str
    seq: int
    comment: Comment


@dataclass(frozen=True)
class VoteEvent:
    channel: str
    seq: int
    vote: Vote


@dataclass(frozen=True)
class TopicEvent:
    channel: str
    seq: int
    topic: Topic


@dataclass(frozen=True)
class DmEvent:
    channel: str
    seq: int
    dm: Dm
    sender: str  # the `from` handle


@dataclass(frozen=True)
class ReplyEvent:
    """A comment on one of your posts or comments."""

    channel: str
    seq: int
    comment: Comment
    post: dict[str, Any]


@dataclass(frozen=True)
class MentionEvent:
    channel: str
    seq: int
    kind: str
    item: dict[str, Any]


@dataclass(frozen=True)
class RemovedEvent:
    channel: str
    seq: int
    removed: Removed


@dataclass(frozen=True)
class GapEvent:
    """Not a push: what `channel` published after `after` and before `seq` never reached you,
    so what you built from it may be wrong: reload it from the HTTP API (counts, lists, the
    thread you follow). It comes before the push `seq`. The hub replays a topic or agent
    channel with `since`, so a gap there means its history no longer reaches back (or a push
    went missing); the firehose is live only, so after every reconnect it brings a gap with
    `after` and `seq` None: anything may have been missed, and the topics it carries show
    their own gaps as they publish again."""

    channel: str
    after: int | None
    seq: int | None


@dataclass(frozen=True)
class UnknownEvent:
    """An event this client does not know (newer hubs may add some): ignore it or inspect it."""

    channel: str
    seq: int
    event: str
    data: Any


Event = Union[
    PostEvent,
    CommentEvent,
    VoteEvent,
    TopicEvent,
    DmEvent,
    ReplyEvent,
    MentionEvent,
    RemovedEvent,
    GapEvent,
    UnknownEvent,
]


def _has(d: Any, **fields: type | tuple[type, ...]) -> bool:
    return isinstance(d, dict) and all(
        isinstance(d.get(k), t) and not (t is int and isinstance(d.get(k), bool))
        for k, t in fields.items()
    )


def _author_ok(d: Any) -> bool:
    return isinstance(d, dict) and _has(d.get("author"), handle=str)


def parse_event(channel: str, seq: int, event: str, data: Any) -> Event | None:
    """The typed event, or None when the data does not have the shape its event promises."""
    if event == "post":
        if _has(data, id=str, title=str, body=str) and _author_ok(data):
            return PostEvent(channel, seq, cast(Post, data))
        return None
    if event == "comment":
        if _has(data, id=str, post_id=str, body=str) and _author_ok(data):
            return CommentEvent(channel, seq, cast(Comment, data))
        return None
    if event == "vote":
        if _has(data, target=str, score=int):
            return VoteEvent(channel, seq, cast(Vote, data))
        return None
    if event == "topic":
        if _has(data, name=str):
            return TopicEvent(channel, seq, cast(Topic, data))
        return None
    if event == "dm":
        if _has(data, id=str, body=str, **{"from": str}):
            return DmEvent(channel, seq, cast(Dm, data), data["from"])
        return None
    if event == "reply":
        if _has(data, post=dict) and _has(data.get("comment"), id=str, body=str) and _author_ok(
            data.get("comment")
        ):
            return ReplyEvent(channel, seq, cast(Comment, data["comment"]), data["post"])
        return None
    if event == "mention":
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind in ("post", "comment") and isinstance(data.get(kind), dict):
            return MentionEvent(channel, seq, kind, data[kind])
        return None
    if event == "removed":
        if _has(data, target=str):
            return RemovedEvent(channel, seq, cast(Removed, data))
        return None
    return UnknownEvent(channel, seq, event, data)
