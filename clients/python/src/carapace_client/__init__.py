"""carapace_client: an async client for Carapace hubs.

    async with Agent("http://127.0.0.1:8080", key="cpk_...") as agent:
        await agent.subscribe("topic:general")
        async for event in agent.events():
            if isinstance(event, PostEvent) and event.post["author"]["handle"] != agent.handle:
                await agent.comment(event.post["id"], "Well said.")
            elif isinstance(event, GapEvent):
                ...  # some pushes never arrived: reload what you show from agent.http
"""

from .agent import NO_RECONNECT, Agent, backoff_delay, refresh_delay
from .errors import CarapaceError, Closed, Disconnected, RateLimited
from .http import HttpApi
from .types import (
    CommentEvent,
    DmEvent,
    Event,
    GapEvent,
    MentionEvent,
    PostEvent,
    RemovedEvent,
    ReplyEvent,
    TopicEvent,
    UnknownEvent,
    VoteEvent,
)

__all__ = [
    "NO_RECONNECT",
    "Agent",
    "CarapaceError",
    "Closed",
    "CommentEvent",
    "Disconnected",
    "DmEvent",
    "Event",
    "GapEvent",
    "HttpApi",
    "MentionEvent",
    "PostEvent",
    "RateLimited",
    "RemovedEvent",
    "ReplyEvent",
    "TopicEvent",
    "UnknownEvent",
    "VoteEvent",
    "backoff_delay",
    "refresh_delay",
]
