"""Drives the gateway's MCP proxy with the official `mcp` Python SDK client.

Usage: python mcp_check.py GATEWAY_URL KEY SCENARIO
Prints one JSON object per line with what happened; the Rust test asserts on it.

Scenarios:
  time   - /mcp/time (mcp-server-time over stdio): initialize, list tools, call an allowed
           tool, call a denied tool.
  notes  - /mcp/notes (a Streamable HTTP server): the same against a remote server.
  badkey - /mcp/time with a wrong key: the SDK must fail to connect.
  kill   - /mcp/local (the notes server over stdio): kill the server process while a call
           is in flight, then call again in a new session.
Every JSON-RPC request the SDK sends is counted by method (`sent`) from the HTTP client's
side, so the test can match them one for one with the recorded events.
"""

import asyncio
import collections
import json
import os
import signal
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


def emit(**fields):
    print(json.dumps(fields), flush=True)


SENT: collections.Counter = collections.Counter()


async def count_request(request) -> None:
    if request.method != "POST":
        return
    try:
        message = json.loads(request.content)
    except ValueError:
        return
    if isinstance(message, dict) and "id" in message and "method" in message:
        SENT[message["method"]] += 1


def client(url: str, key: str) -> Client:
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {key}"}, timeout=30, event_hooks={"request": [count_request]}
    )
    return Client(streamable_http_client(url, http_client=http), mode="legacy", cache=None)


def text_of(result) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def exercise(url: str, key: str, allowed: tuple[str, dict], denied: tuple[str, dict]) -> None:
    async with client(url, key) as session:
        emit(step="initialized", server=session.server_info.name if session.server_info else None)
        tools = await session.list_tools()
        emit(step="tools", names=sorted(tool.name for tool in tools.tools))
        result = await session.call_tool(allowed[0], allowed[1])
        emit(step="allowed", is_error=bool(result.is_error), text=text_of(result))
        try:
            result = await session.call_tool(denied[0], denied[1])
            emit(step="denied", raised=False, is_error=bool(result.is_error), text=text_of(result))
        except MCPError as error:
            emit(step="denied", raised=True, code=error.error.code, message=error.error.message)


async def main() -> None:
    url, key, scenario = sys.argv[1], sys.argv[2], sys.argv[3]
    if scenario == "time":
        await exercise(
            f"{url}/mcp/time",
            key,
            ("get_current_time", {"timezone": "Europe/Paris"}),
            ("convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}),
        )
    elif scenario == "notes":
        await exercise(f"{url}/mcp/notes", key, ("add_note", {"text": "budget review at 3pm"}), ("delete_everything", {}))
    elif scenario == "badkey":
        try:
            async with client(f"{url}/mcp/time", key) as session:
                await session.list_tools()
            emit(step="badkey", raised=False)
        except Exception as error:  # the SDK's own error type for a refused connection
            emit(step="badkey", raised=True, error=type(error).__name__, text=str(error)[:300])
    elif scenario == "kill":
        async with client(f"{url}/mcp/local", key) as session:
            first = int(text_of(await session.call_tool("pid", {})))
            loop = asyncio.get_running_loop()
            loop.call_later(1.0, os.kill, first, signal.SIGKILL)
            started = loop.time()
            try:
                result = await session.call_tool("wait", {"seconds": 20})
                emit(step="in_flight", raised=False, text=text_of(result))
            except MCPError as error:
                emit(step="in_flight", raised=True, code=error.error.code, message=error.error.message,
                     seconds=round(loop.time() - started, 1))
        async with client(f"{url}/mcp/local", key) as session:
            second = int(text_of(await session.call_tool("pid", {})))
            emit(step="restarted", first_pid=first, second_pid=second)
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    emit(step="sent", methods=dict(SENT))


asyncio.run(main())
