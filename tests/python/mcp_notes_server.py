"""A small Streamable HTTP MCP server written with the official `mcp` SDK, for tests and
benchmarks of the gateway's MCP proxy.

Usage: python mcp_notes_server.py PORT     (Streamable HTTP at http://127.0.0.1:PORT/mcp)
       python mcp_notes_server.py stdio    (over stdin and stdout)
Tools: `add_note`, `count_notes`, `delete_everything` (what policy tests deny), `pid` (the
server's process id) and `wait` (sleeps, to have a call in flight).
"""

import asyncio
import os
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("notes", version="1.0.0", instructions="Keeps short notes in memory.")
notes: list[str] = []


@server.tool()
def add_note(text: str) -> str:
    """Stores a note and says how many there are."""
    notes.append(text)
    return f"stored note {len(notes)}: {text}"


@server.tool()
def count_notes() -> int:
    """How many notes are stored."""
    return len(notes)


@server.tool()
def delete_everything() -> str:
    """Deletes every note."""
    notes.clear()
    return "deleted"


@server.tool()
def pid() -> int:
    """The server's process id."""
    return os.getpid()


@server.tool()
async def wait(seconds: float) -> str:
    """Sleeps for `seconds`."""
    await asyncio.sleep(seconds)
    return f"waited {seconds} s"


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run()
    else:
        server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[1]), streamable_http_path="/mcp")
