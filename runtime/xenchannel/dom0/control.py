"""The dom0 agent's control socket: the server inside the agent, and the client the CLI
uses.

One request per connection: a JSON object and a newline (``{"op": "ping"}`` or
``{"op": "query", "domain": ..., "what": [...], "timeout": s}``), answered with one JSON
object, ``{"ok": true, ...}`` or ``{"ok": false, "error": one sentence}``.  The socket is
created 0600 (never wider, not even briefly); every read and write has a bound.
"""

import asyncio
import json
import logging
import os
import socket as socketlib
import stat
import time
from typing import TYPE_CHECKING, Any, Dict, Optional, Set

from xenchannel import __version__
from xenchannel.dom0 import log_event
from xenchannel.dom0.config import AgentError
from xenchannel.protocol import ChannelError

if TYPE_CHECKING:  # pragma: no cover - types only
    from xenchannel.dom0.agent import Supervisor


class ControlServer:
    """Answers ``ping`` and ``query`` for the supervisor's links."""

    def __init__(self, supervisor: "Supervisor") -> None:
        self.supervisor = supervisor
        self.config = supervisor.config
        self._server: Optional[asyncio.AbstractServer] = None
        self._tasks: Set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Listen on the configured socket (0600); AgentError naming what is in the way."""
        path = self.config.control_socket
        if not path:
            return
        try:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            self._clear_stale_socket(path)
            sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
            try:
                # The socket must never exist with a wider mode, not even briefly.
                old_umask = os.umask(0o177)
                try:
                    sock.bind(path)
                finally:
                    os.umask(old_umask)
                os.chmod(path, 0o600)
                sock.listen(64)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            raise AgentError(
                f"cannot create the control socket {path} ({exc.strerror or exc}); "
                "check the directory or choose another path"
            ) from None
        self._server = await asyncio.start_unix_server(self._on_control, sock=sock)

    async def close(self) -> None:
        """Stop listening, end the requests in progress, remove the socket."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        self._remove_socket()

    @staticmethod
    def _clear_stale_socket(path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise AgentError(f"{path} exists and is not a socket; remove it or choose another path")
        probe = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: left over from an agent that died
            return
        finally:
            probe.close()
        raise AgentError(f"another agent is already listening on {path}; stop it first")

    def _remove_socket(self) -> None:
        path = self.config.control_socket
        if not path:
            return
        try:
            os.unlink(path)
        except OSError:
            pass

    async def _on_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        config = self.config
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            try:
                raw = await asyncio.wait_for(
                    _read_request(reader, config.control_max_request), config.control_read_timeout
                )
            except asyncio.TimeoutError:
                reply: Dict[str, Any] = _control_error(
                    f"no complete request within {config.control_read_timeout:g} s; send one JSON "
                    "object followed by a newline"
                )
            except _ControlError as exc:
                reply = _control_error(str(exc))
            else:
                reply = await self._control_request(raw)
            writer.write(json.dumps(reply, sort_keys=True).encode("utf-8") + b"\n")
            await asyncio.wait_for(writer.drain(), config.control_read_timeout)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass  # the client went away; nothing to tell it
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _control_request(self, raw: bytes) -> Dict[str, Any]:
        try:
            request = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return _control_error("the request is not valid JSON")
        except RecursionError:
            return _control_error("the request is JSON nested too deeply; send a flat object")
        if not isinstance(request, dict):
            return _control_error("the request must be a JSON object with an op key")
        op = request.get("op")
        if op == "ping":
            return {"ok": True, "version": __version__, "domains": len(self.supervisor.links)}
        if op == "query":
            return await self._control_query(request)
        return _control_error(f"unknown op {_short(op)}; use ping or query")

    async def _control_query(self, request: Dict[str, Any]) -> Dict[str, Any]:
        domain = request.get("domain")
        if not isinstance(domain, str):
            return _control_error("a query needs the domain's name")
        link = self.supervisor.links.get(domain)
        if link is None:
            return _control_error(
                f"unknown domain {_short(domain)}; it is not in the store {self.config.store_dir}"
            )
        what = request.get("what", [])
        if (
            not isinstance(what, list)
            or len(what) > self.config.max_query_keys
            or not all(isinstance(key, str) and 0 < len(key) <= 64 for key in what)
        ):
            return _control_error(
                f"what must be a list of at most {self.config.max_query_keys} names of 1 to 64 "
                "characters"
            )
        timeout = request.get("timeout", self.config.query_timeout)
        if (
            not isinstance(timeout, (int, float))
            or isinstance(timeout, bool)
            or not 0 < timeout <= self.config.max_query_timeout
        ):
            return _control_error(
                f"timeout must be a number of seconds, 0 to {self.config.max_query_timeout:g}"
            )
        started = time.monotonic()
        try:
            reply = await link.query(what, float(timeout))
        except ChannelError as exc:
            log_event(domain, "query-failed", logging.WARNING, what=",".join(what), error=str(exc))
            return _control_error(str(exc))
        log_event(
            domain,
            "query",
            what=",".join(what),
            seconds=f"{time.monotonic() - started:.3f}",
        )
        return {"ok": True, "reply": reply}


class _ControlError(Exception):
    pass


def _control_error(message: str) -> Dict[str, Any]:
    return {"ok": False, "error": message}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 66 else text[:63] + "..."


async def _read_request(reader: asyncio.StreamReader, limit: int) -> bytes:
    """One request: bytes up to a newline or EOF, at most ``limit``."""
    data = bytearray()
    while True:
        chunk = await reader.read(4096)
        if not chunk:
            break
        data.extend(chunk)
        if b"\n" in chunk:
            data = data[: data.index(b"\n")]
            break
        if len(data) > limit:
            raise _ControlError(f"the request exceeds {limit // 1024} KiB")
    if len(data) > limit:
        raise _ControlError(f"the request exceeds {limit // 1024} KiB")
    return bytes(data)


async def _read_all(reader: asyncio.StreamReader, limit: int) -> bytes:
    data = bytearray()
    while len(data) <= limit:
        chunk = await reader.read(64 * 1024)
        if not chunk:
            break
        data.extend(chunk)
    return bytes(data)


async def control_request(path: str, request: Dict[str, Any], timeout: float) -> Dict[str, Any]:
    """Send one request to a running agent's control socket; its reply (for the CLI)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), 5.0)
    except FileNotFoundError:
        raise AgentError(
            f"the control socket {path} does not exist; is the agent running?"
        ) from None
    except (OSError, asyncio.TimeoutError) as exc:
        detail = getattr(exc, "strerror", None) or "timed out"
        raise AgentError(f"cannot connect to the control socket {path} ({detail})") from None
    try:
        writer.write(json.dumps(request).encode("utf-8") + b"\n")
        await asyncio.wait_for(writer.drain(), 5.0)
        try:
            raw = await asyncio.wait_for(_read_all(reader, 16 * 1024 * 1024), timeout)
        except asyncio.TimeoutError:
            raise AgentError(f"the agent did not answer within {timeout:g} s") from None
    finally:
        writer.close()
    try:
        reply = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise AgentError("the agent's reply is not valid JSON") from None
    if not isinstance(reply, dict):
        raise AgentError("the agent's reply is not a JSON object")
    return reply
