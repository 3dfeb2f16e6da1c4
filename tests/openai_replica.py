"""A loopback OpenAI-compatible chat server for tests: counts what it is asked, can fail or be slow.

`Replica.start(answer=fn)` serves /v1/chat/completions on 127.0.0.1 in a thread; `answer(body)`
gives the reply text. `status=500` makes every call fail; `calls`, `times` and `bodies` are what
the server saw.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# module level: FastAPI resolves the handler's `Request` annotation from this module's globals
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Replica:
    answer: Callable[[dict], str] = lambda body: "ok"
    status: int = 200
    latency_s: float = 0.0
    calls: int = 0
    times: list[float] = field(default_factory=list)
    bodies: list[dict] = field(default_factory=list)
    url: str = ""
    _server: object = None
    _thread: threading.Thread | None = None

    def app(self):
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(req: Request):
            body = await req.json()
            self.calls += 1
            self.times.append(time.time())
            self.bodies.append(body)
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if self.status != 200:
                return JSONResponse({"error": {"message": "replica down", "type": "server_error"}}, status_code=self.status)
            return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": self.answer(body)}}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}

        return app

    @classmethod
    def start(cls, **kw) -> Replica:
        import uvicorn

        replica = cls(**kw)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(replica.app(), host="127.0.0.1", port=port, log_level="error"))
        replica._server, replica.url = server, f"http://127.0.0.1:{port}/v1"
        replica._thread = threading.Thread(target=server.run, daemon=True)
        replica._thread.start()
        while not server.started:
            time.sleep(0.02)
        return replica

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(5)

    def calls_per_minute(self) -> dict[int, int]:
        """Calls in each calendar minute: the window litellm counts rpm in."""
        out: dict[int, int] = {}
        for t in self.times:
            out[int(t // 60)] = out.get(int(t // 60), 0) + 1
        return out
