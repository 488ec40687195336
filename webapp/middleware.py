"""HTTP middleware of the served app."""
from __future__ import annotations

import json


class OptionalAPIArguments:
    """ASGI middleware: a plain-HTTP call that leaves out trailing optional arguments gets their defaults.

    The API page (and gradio_client) call ``/describe``'s max_new_tokens optional, but Gradio's HTTP
    route requires every input ("needed: 3, got: 2"); this fills in what gradio_client would have.
    ``optional``: endpoint name -> (required count, defaults of the arguments after them).
    """

    def __init__(self, app, optional: dict[str, tuple[int, list]]):
        self.app, self.optional = app, optional

    async def __call__(self, scope, receive, send):
        name = None
        if scope["type"] == "http" and scope["method"] == "POST":
            name = next((n for n in self.optional if scope["path"].endswith(f"/call/{n}")), None)
        if name is None:
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        required, defaults = self.optional[name]
        try:
            data = json.loads(body)
            given = data.get("data") if isinstance(data, dict) else None
            if isinstance(given, list) and required <= len(given) < required + len(defaults):
                data["data"] = given + defaults[len(given) - required:]
                body = json.dumps(data).encode()
        except ValueError:
            pass  # not JSON: Gradio answers it as it would have
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        return await self.app({**scope, "headers": headers}, replay, send)
