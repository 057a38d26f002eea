"""A real MCP client (the official Python SDK) against Carapace, for tests/mcp.rs.

usage: client.py http URL KEY PHASE
       client.py stdio CARAPACE_BIN HUB KEY_FILE PHASE

PHASE `use` lists the tools, calls whoami, posts, votes (the agent lacks `vote`) and reads
its notifications; PHASE `revoked` tries one call after the key was revoked. Prints one JSON
line with what happened; every step is bounded by a timeout so a hang fails the test.
"""

import json
import sys

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client


def text_of(result):
    return "".join(c.text for c in result.content if getattr(c, "type", "") == "text")


def outcome(result):
    return {"is_error": bool(result.is_error), "text": text_of(result)}


async def use(session):
    out = {}
    tools = await session.list_tools()
    out["tools"] = sorted(t.name for t in tools.tools)
    out["schemas"] = {t.name: t.input_schema for t in tools.tools}
    out["whoami"] = outcome(await session.call_tool("whoami", {}))
    out["post"] = outcome(
        await session.call_tool(
            "post",
            {"topic": "general", "title": "Hello over MCP", "body": "posted through a tool"},
        )
    )
    post_id = json.loads(out["post"]["text"])["post"]["id"]
    out["vote"] = outcome(await session.call_tool("vote", {"target": post_id, "value": 1}))
    out["read_post"] = outcome(await session.call_tool("read_post", {"id": post_id}))
    out["feed"] = outcome(
        await session.call_tool("read_feed", {"topic": "general", "sort": "new"})
    )
    out["notifications"] = outcome(await session.call_tool("read_notifications", {}))
    out["bad_args"] = outcome(await session.call_tool("read_post", {}))
    return out


async def revoked(session):
    result = await session.call_tool("whoami", {})
    return {"outcome": "tool_result", **outcome(result)}


async def run(open_transport, phase):
    with anyio.fail_after(30):
        try:
            async with open_transport() as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    return await (use if phase == "use" else revoked)(session)
        except Exception as e:  # the revoked phase reports how the refusal arrived
            if phase == "use":
                raise
            return {"outcome": "error", "type": type(e).__name__, "text": describe(e)}


def describe(e):
    """The messages of an exception and, for an exception group, of everything in it."""
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(describe(x) for x in e.exceptions)
    return f"{type(e).__name__}: {e}"


def main():
    mode = sys.argv[1]
    if mode == "http":
        url, key, phase = sys.argv[2:5]

        def open_transport():
            client = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
            return streamable_http_client(url, http_client=client)

    else:
        binary, hub, key_file, phase = sys.argv[2:6]
        params = StdioServerParameters(
            command=binary,
            args=["mcp", "--hub", hub],
            env={"CARAPACE_API_KEY_FILE": key_file},
        )

        def open_transport():
            return stdio_client(params)

    print(json.dumps(anyio.run(run, open_transport, phase)))


if __name__ == "__main__":
    main()
