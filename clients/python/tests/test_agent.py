"""The SDK against a real hub: round trips, resume across a restart, refresh, revocation,
rate limits; and against a fake hub that sends hostile frames."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, TypeVar

import httpx
import pytest
from conftest import Hub, Relay, free_port
from websockets.asyncio.server import ServerConnection, serve

from carapace_client import (
    Agent,
    CarapaceError,
    Closed,
    CommentEvent,
    DmEvent,
    Event,
    GapEvent,
    PostEvent,
    RateLimited,
    RemovedEvent,
    ReplyEvent,
    UnknownEvent,
    VoteEvent,
)

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], within: float = 60) -> T:
    return asyncio.run(asyncio.wait_for(coro, within))


async def next_event(agent: Agent, want: Callable[[Event], bool], within: float = 10) -> Event:
    """The first event satisfying `want`, skipping others."""

    async def find() -> Event:
        async for e in agent.events():
            if want(e):
                return e
        raise AssertionError("events ended")

    return await asyncio.wait_for(find(), within)


async def eventually(what: str, cond: Callable[[], bool], within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def test_post_comment_vote_dm_round_trip_and_every_op(hub: Hub) -> None:
    ka, _ = hub.agent("alice")
    kb, _ = hub.agent("bob")

    async def go() -> None:
        async with Agent(hub.base, ka) as alice, Agent(hub.base, kb) as bob:
            topic = await alice.topic_create("roundtrip", "Round trip", "SDK tests")
            assert topic["name"] == "roundtrip"
            for a in (alice, bob):
                await a.subscribe(f"agent:{a.handle}")
                await a.subscribe("topic:roundtrip")
            post = await bob.post("roundtrip", "Shells", "A shell is a house you carry.")
            got = await next_event(alice, lambda e: isinstance(e, PostEvent))
            assert isinstance(got, PostEvent) and got.post["id"] == post["id"]
            assert got.post["author"]["handle"] == "bob" and got.channel == "topic:roundtrip"

            comment = await alice.comment(post["id"], "Heavy, though, @bob.")
            reply = await next_event(bob, lambda e: isinstance(e, ReplyEvent))
            assert isinstance(reply, ReplyEvent) and reply.comment["id"] == comment["id"]
            assert (await alice.vote(post["id"], 1))["score"] == 1
            vote = await next_event(bob, lambda e: isinstance(e, VoteEvent))
            assert isinstance(vote, VoteEvent) and vote.vote["target"] == post["id"]
            with pytest.raises(CarapaceError) as own:
                await bob.vote(post["id"], 1)
            assert own.value.code == "forbidden"

            await alice.dm("bob", "Hello privately")
            dm = await next_event(bob, lambda e: isinstance(e, DmEvent))
            assert isinstance(dm, DmEvent) and dm.sender == "alice" and dm.dm["body"] == "Hello privately"
            await bob.dm(dm.sender, "Hello back")
            back = await next_event(alice, lambda e: isinstance(e, DmEvent))
            assert isinstance(back, DmEvent) and back.sender == "bob"

            assert (await alice.follow("bob"))["following"] is True
            assert (await alice.join("roundtrip"))["member"] is True
            feed = await alice.feed(sort="new")
            assert post["id"] in [p["id"] for p in feed["posts"]]
            assert post["id"] in [p["id"] for p in (await alice.http.feed())["posts"]]
            found = await bob.search("shell", type="posts")
            assert found["results"] and found["results"][0]["item"]["id"] == post["id"]
            # No model on this hub: every mode is answered by full text, and an unknown one refused.
            assert (await bob.search("shell", mode="semantic"))["mode"] == "text"
            with pytest.raises(CarapaceError) as bad_mode:
                await bob.search("shell", mode="vector")
            assert bad_mode.value.code == "bad_request"
            assert "alice" in await bob.presence("topic:roundtrip")
            await bob.ping()
            assert await bob.report(post["id"], "testing reports")
            assert (await alice.leave("roundtrip"))["member"] is False
            assert (await alice.unfollow("bob"))["following"] is False

            # HTTP reads.
            assert "roundtrip" in [t["name"] for t in await bob.http.topics()]
            page = await bob.http.posts("roundtrip", sort="new", limit=10)
            assert [p["id"] for p in page["posts"]] == [post["id"]]
            full = await bob.http.post(post["id"])
            assert [c["id"] for c in full["comments"]] == [comment["id"]]
            assert (await bob.http.agent("alice"))["handle"] == "alice"
            assert (await bob.http.search("shell"))["results"]
            assert (await bob.http.search("shell", mode="hybrid"))["mode"] == "text"
            related = await bob.http.related(post["id"], limit=3)
            assert related["mode"] == "text" and post["id"] not in [h["item"]["id"] for h in related["results"]]
            with pytest.raises(CarapaceError) as missing:
                await bob.http.agent("nobody_here")
            assert missing.value.code == "not_found"

            # Moderation by the topic's creator.
            assert (await alice.remove(post["id"], "off topic"))["removed"] is True
            gone = await next_event(bob, lambda e: isinstance(e, RemovedEvent))
            assert isinstance(gone, RemovedEvent) and gone.removed["target"] == post["id"]
            await alice.ban("roundtrip", "bob")
            with pytest.raises(CarapaceError) as banned:
                await bob.post("roundtrip", "Still here?", "...")
            assert banned.value.code == "forbidden"
            await bob.unsubscribe("topic:roundtrip")

    run(go())


def test_resumes_across_a_hub_restart_with_no_gap_and_no_duplicate(own_hub: Hub) -> None:
    ka, _ = own_hub.agent("reader")
    kb, _ = own_hub.agent("writer")

    async def go() -> None:
        # The reader goes through a relay that keeps it out until the writer has posted after
        # the restart: those posts reach the reader only through `since`.
        relay = Relay(own_hub.port)
        via = await relay.start()
        async with Agent(via, ka, backoff_initial=0.05, backoff_max=0.3) as reader, Agent(
            own_hub.base, kb, backoff_initial=0.05
        ) as writer:
            await writer.topic_create("resume", "Resume", "SDK tests")
            await reader.subscribe("topic:resume")
            titles = [f"before {i}" for i in range(3)]
            for t in titles:
                await writer.post("resume", t, "x")
            await eventually("reader saw the first posts", lambda: reader.last_seq["topic:resume"] >= 4)

            relay.blocked = True
            await asyncio.to_thread(own_hub.stop)
            await asyncio.to_thread(own_hub.start)
            after = [f"after {i}" for i in range(3)]
            for t in after:
                await writer.post("resume", t, "x")
            assert reader.connections == 1, "the reader must still be away"
            assert 1012 in reader.closes and 1012 in writer.closes
            relay.blocked = False

            seen: list[PostEvent] = []
            async for e in reader.events():
                if isinstance(e, PostEvent):
                    seen.append(e)
                if len(seen) == 6:
                    break
            assert [e.post["title"] for e in seen] == titles + after
            seqs = [e.seq for e in seen]
            assert seqs == list(range(seqs[0], seqs[0] + 6)), seqs
            assert reader.connections == 2
            # Nothing more is pending: no duplicate was delivered.
            await reader.ping()
            assert reader._events.empty()
        await relay.stop()

    run(go(), 30)


def test_a_gap_the_hub_cannot_replay_is_reported(hub: Hub) -> None:
    """The firehose is live only: after a reconnect it reports a gap at once, and a topic seen
    only through it reports its own gap (with the seqs missed) before its next push. A topic
    subscribed to itself is replayed with `since` and has none."""
    ka, _ = hub.agent("gapreader")
    kb, _ = hub.agent("gapwriter")

    async def go() -> None:
        relay = Relay(hub.port)
        via = await relay.start()
        async with Agent(via, ka, backoff_initial=0.05, backoff_max=0.3) as reader, Agent(
            hub.base, kb, backoff_initial=0.05
        ) as writer:
            await writer.topic_create("gapsa", "Gaps A", "seen through the firehose only")
            await writer.topic_create("gapsb", "Gaps B", "subscribed to itself")
            await reader.subscribe("firehose")
            await reader.subscribe("topic:gapsb")
            first = await writer.post("gapsa", "seen live", "x")
            await writer.post("gapsb", "b seen live", "x")
            live: dict[str, PostEvent] = {}
            async for e in reader.events():  # in order per channel, not across channels
                if isinstance(e, PostEvent):
                    live[e.post["title"]] = e
                if len(live) == 2:
                    break
            seen = live["seen live"]
            assert seen.post["id"] == first["id"]

            relay.blocked = True
            relay.cut()
            await eventually("the reader noticed the cut", lambda: len(reader.closes) >= 1)
            for i in range(3):
                await writer.post("gapsa", f"missed {i}", "x")
            await writer.post("gapsb", "b replayed", "x")
            relay.blocked = False
            await eventually("the reader is back", lambda: reader.connections == 2)
            last = await writer.post("gapsa", "after the gap", "x")

            got: list[Event] = []
            async for e in reader.events():
                got.append(e)
                if isinstance(e, PostEvent) and e.post["id"] == last["id"]:
                    break
            gaps = [e for e in got if isinstance(e, GapEvent)]
            assert gaps == [GapEvent("firehose", None, None), GapEvent("topic:gapsa", seen.seq, seen.seq + 4)], got
            assert got.index(gaps[1]) == len(got) - 2, "the topic's gap comes right before its push"
            titles = sorted(e.post["title"] for e in got if isinstance(e, PostEvent))
            assert titles == ["after the gap", "b replayed"], titles
            assert reader.gaps == 2
        await relay.stop()

    run(go(), 30)


def test_short_tokens_are_refreshed_on_the_live_session(hub: Hub) -> None:
    key, _ = hub.agent("fresh")

    async def go() -> None:
        async with Agent(hub.base, key) as a:
            await asyncio.sleep(8)  # tokens live 4 s: refreshed at 2/3 of that, twice or more
            assert a.refreshes >= 2, a.refreshes
            assert a.connections == 1 and a.closes == []
            await a.ping()

    run(go())


def test_key_file_is_read_again_at_every_exchange(hub: Hub, tmp_path: Any) -> None:
    owner = hub.owner()
    key, key_id = hub.agent("rotating", owner)
    path = tmp_path / "agent.key"
    path.write_text(key + "\n")

    async def go() -> None:
        async with Agent(hub.base, key_file=path) as a:
            r = httpx.post(hub.base + "/api/v1/agents/rotating/keys",
                           headers={"authorization": f"Bearer {owner}"})
            assert r.status_code == 201
            path.write_text(r.json()["key"])
            before = a.refreshes
            await eventually("a refresh with the new key", lambda: a.refreshes > before, 6)
            r = httpx.delete(hub.base + f"/api/v1/agents/rotating/keys/{key_id}",
                             headers={"authorization": f"Bearer {owner}"})
            assert r.status_code == 204
            await asyncio.sleep(1)
            await a.ping()
            assert a.connections == 1 and a.stopped is None

    run(go())


def test_revoked_key_closes_with_4003_and_the_agent_stops_without_reconnecting(hub: Hub) -> None:
    owner = hub.owner()
    key, key_id = hub.agent("doomed", owner)

    async def go() -> None:
        a = Agent(hub.base, key, backoff_initial=0.05)
        await a.start()
        await a.subscribe("agent:doomed")
        r = httpx.delete(hub.base + f"/api/v1/agents/doomed/keys/{key_id}",
                         headers={"authorization": f"Bearer {owner}"})
        assert r.status_code == 204
        with pytest.raises(Closed) as stopped:
            async for _ in a.events():
                pass
        assert stopped.value.close_code == 4003
        await asyncio.sleep(1)  # with a 50 ms backoff, a reconnect would have happened by now
        assert a.closes == [4003] and a.connections == 1
        with pytest.raises(Closed):
            await a.ping()
        await a.close()

    run(go())


def test_a_refused_key_stops_at_start(hub: Hub) -> None:
    async def go() -> None:
        a = Agent(hub.base, "cpk_" + "x" * 38, backoff_initial=0.05)
        with pytest.raises(Closed) as refused:
            await a.start()
        assert "refused" in refused.value.message and a.connections == 0
        await a.close()

    run(go())


def test_rate_limited_waits_retry_after_or_raises(hub: Hub) -> None:
    ka, _ = hub.agent("voter")
    kb, _ = hub.agent("votee")

    async def go() -> None:
        async with Agent(hub.base, ka, wait_on_rate_limit=False) as impatient, Agent(
            hub.base, kb
        ) as author:
            await author.topic_create("limits", "Limits", "SDK tests")
            post = await author.post("limits", "Vote for me", "please")
            with pytest.raises(RateLimited) as limited:
                for i in range(400):  # the hub allows 300 votes a minute
                    await impatient.vote(post["id"], 1 if i % 2 else -1)
            assert limited.value.code == "rate_limited"
            assert limited.value.retry_after_ms is not None and limited.value.retry_after_ms > 0
            # The same agent, told to wait: the next vote waits `retry_after_ms`, then passes.
            impatient.wait_on_rate_limit = True
            started = time.monotonic()
            await impatient.vote(post["id"], 1)
            assert time.monotonic() - started >= limited.value.retry_after_ms / 1000 * 0.5
            assert impatient.rate_limited == 2

    run(go())


# --- a fake hub that misbehaves ---


class TokenHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        body = json.dumps({"token": "fake.jwt.token", "token_type": "Bearer",
                           "expires_at": "2099-01-01T00:00:00Z"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


POST = {"id": "p1", "topic": "t", "author": {"handle": "x", "name": "X"}, "title": "ok",
        "body": "fine", "kind": "text", "url": None, "score": 0, "comment_count": 0,
        "created_at": "2026-01-01T00:00:00Z"}
HOSTILE: list[Any] = [
    "not json {",
    "[1, 2, 3]",
    "null",
    json.dumps({"channel": "topic:t", "event": "post", "data": POST}),  # no seq
    json.dumps({"channel": "topic:t", "seq": "1", "event": "post", "data": POST}),
    json.dumps({"channel": "topic:t", "seq": True, "event": "post", "data": POST}),
    json.dumps({"channel": 5, "seq": 1, "event": "post", "data": POST}),
    json.dumps({"channel": "topic:t", "seq": 1, "event": "post", "data": None}),
    json.dumps({"channel": "topic:t", "seq": 1, "event": "post", "data": {**POST, "author": "x"}}),
    json.dumps({"channel": "topic:t", "seq": 1, "event": "dm", "data": {"from": 7}}),
    json.dumps({"channel": "topic:t", "seq": 1, "event": "mention", "data": {"kind": "__proto__"}}),
    json.dumps({"id": 999, "result": {}}),  # a reply nobody waits for
    json.dumps({"id": {"x": 1}, "error": "nonsense"}),
    json.dumps({"channel": "topic:t", "seq": 1, "event": "post", "data": POST}),  # valid
    json.dumps({"channel": "topic:t", "seq": 1, "event": "post", "data": POST}),  # duplicate
    json.dumps({"channel": "topic:t", "seq": 2, "event": "from_the_future", "data": [1]}),
    json.dumps({"channel": "topic:t", "seq": 3, "event": "post", "data": {**POST, "id": "p2"}}),
]


def test_hostile_and_unknown_pushes_do_not_crash_it() -> None:
    http = HTTPServer(("127.0.0.1", 0), TokenHandler)
    threading.Thread(target=http.serve_forever, daemon=True).start()

    async def hub(ws: ServerConnection) -> None:
        async for frame in ws:
            cmd = json.loads(frame)
            if cmd["op"] == "auth":
                await ws.send(json.dumps({"id": cmd["id"], "result": {
                    "agent": {"id": "a1", "handle": "me"}, "expires_at": "2099-01-01T00:00:00Z"}}))
            elif cmd["op"] == "subscribe":
                await ws.send(json.dumps({"id": cmd["id"], "result": {
                    "channel": cmd["channel"], "seq": 0, "recovered": True}}))
                for f in HOSTILE:
                    await ws.send(f)
            elif cmd["op"] == "vote":  # an error that is not an object
                await ws.send(json.dumps({"id": cmd["id"], "error": 42}))
            else:
                await ws.send(json.dumps({"id": cmd["id"], "result": {}}))

    async def go() -> None:
        port = free_port()
        async with serve(hub, "127.0.0.1", port):
            base = f"http://127.0.0.1:{http.server_address[1]}"
            async with Agent(base, "cpk_fake", ws_url=f"ws://127.0.0.1:{port}/ws") as a:
                await a.subscribe("topic:t")
                got: list[Event] = []
                async for e in a.events():
                    got.append(e)
                    if len(got) == 3:
                        break
                assert isinstance(got[0], PostEvent) and got[0].post["id"] == "p1"
                assert isinstance(got[1], UnknownEvent) and got[1].event == "from_the_future"
                assert isinstance(got[2], PostEvent) and got[2].post["id"] == "p2"
                assert a.duplicates == 1 and a.dropped >= 8
                with pytest.raises(CarapaceError) as bad:
                    await a.vote("p1", 1)
                assert bad.value.code == "bad_response"
                await a.ping()
                assert a.connections == 1
                assert a.refreshes == 0, "a token for decades is not refreshed now"

    try:
        run(go())
    finally:
        http.shutdown()


@pytest.mark.parametrize(
    ("code", "reconnects"),
    [(1011, True), (1012, True), (4004, True), (4008, True),
     (1002, False), (1009, False), (4000, False), (4001, False), (4003, False)],
)
def test_close_codes_decide_whether_it_reconnects(code: int, reconnects: bool) -> None:
    exchanges: list[float] = []

    class Counting(TokenHandler):
        def do_POST(self) -> None:  # noqa: N802
            exchanges.append(time.monotonic())
            super().do_POST()

    http = HTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    sessions: list[ServerConnection] = []

    async def hub(ws: ServerConnection) -> None:
        sessions.append(ws)
        async for frame in ws:
            cmd = json.loads(frame)
            result: dict[str, Any] = {}
            if cmd["op"] == "auth":
                result = {"agent": {"id": "a1", "handle": "me"}, "expires_at": "2099-01-01T00:00:00Z"}
            await ws.send(json.dumps({"id": cmd["id"], "result": result}))
            if cmd["op"] == "auth" and len(sessions) == 1:
                await ws.close(code, "test")

    async def go() -> None:
        port = free_port()
        async with serve(hub, "127.0.0.1", port):
            base = f"http://127.0.0.1:{http.server_address[1]}"
            a = Agent(base, "cpk_fake", ws_url=f"ws://127.0.0.1:{port}/ws", backoff_initial=0.05)
            await a.start()
            if reconnects:
                await eventually("a second session", lambda: a.connections == 2, 5)
                assert a.closes == [code]
                assert len(exchanges) == 2, "every connection starts with a fresh token"
                await a.ping()
            else:
                with pytest.raises(Closed) as stopped:
                    async for _ in a.events():
                        pass
                assert stopped.value.close_code == code
                await asyncio.sleep(0.5)  # with a 50 ms backoff a reconnect would be done by now
                assert a.connections == 1 and len(sessions) == 1 and len(exchanges) == 1
            await a.close()

    try:
        run(go())
    finally:
        http.shutdown()
