"""The operator's console: ``hms-bus ui APP`` serves it (Starlette, on uvicorn).

Server-rendered pages (Jinja2 templates, autoescaped) over the app's store and bus,
with a little JavaScript of its own: Server-Sent Events (``/events``) tell a page what
the projection changed, and the page fetches the part that changed. No Node build, no
CDN: the one library it runs in the browser, mermaid (for the definitions' diagrams),
ships in ``static/`` (see ``static/VENDORED.txt``), so it works offline.

Pages: ``/`` the workflows (filters, search by id, paging, live counts per status),
``/workflows/<id>`` one workflow (its steps as a timeline, payload and result, history,
and why it is where it is), ``/dead-letters``, ``/health``, ``/definitions``.

Actions (cancel, redrive, signal, dead-letter redrive) are ``POST /api/actions/<name>``
with a JSON body. The console starts read-only: actions are enabled by ``ui.token``
(``HMS_UI__TOKEN``), and every action request must carry it in the ``X-HMS-Token``
header; anything else is answered 403 and changes nothing. What the pages show comes
through the client API (sensitive values masked) and is masked again as a whole before
it is rendered: no sensitive plaintext reaches a page.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._dead_letters import letters, redrive_letter
from .._diagram import mermaid
from .._durations import seconds_of
from .._envelope import utcnow
from .._errors import ConfigError, HmsBusError, NotFoundError
from .._health import HealthReport
from .._http import StatusServer
from .._management import Management
from .._status import WorkflowState
from .._why import explain
from ..store import Change

__all__ = ["Console", "console_server", "create_app"]

HERE = Path(__file__).resolve().parent
PAGE = 50
LIVE_EVERY = 0.5
"""Seconds between two live updates of one page, at most (changes are gathered)."""

_CSP = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class _Headers(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response


def _since(text: str | None) -> datetime | None:
    """``30m``, ``2h``, ``7d`` back from now (:func:`~hms_bus._durations.seconds_of`); None
    for anything else."""
    back = seconds_of(text) if text else None
    return None if back is None else utcnow() - timedelta(seconds=back)


def _when(value: datetime | str | None) -> str:
    if value is None:
        return "–"
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return "–"
    seconds = ((end or utcnow()) - start).total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


class Console:
    """The console of one connected Management (see module docs)."""

    def __init__(self, mgmt: Management, *, token: str | None = None) -> None:
        self.mgmt = mgmt
        self.token = token or None
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["when"] = _when
        self.env.filters["json"] = lambda v: json.dumps(v, indent=2, default=str)
        self.env.globals["writable"] = self.token is not None
        self._subscribers: set[asyncio.Queue[Sequence[Change] | None]] = set()
        self._watching = False

    # -- the app ---------------------------------------------------------------------------

    def app(self) -> Starlette:
        """The ASGI application."""
        return Starlette(
            routes=[
                Route("/", self.workflows),
                Route("/workflows/{workflow_id:path}", self.workflow),
                Route("/dead-letters", self.dead_letters),
                Route("/health", self.health),
                Route("/definitions", self.definitions),
                Route("/events", self.events),
                Route("/api/counts", self.counts),
                Route("/api/why/{workflow_id:path}", self.why),
                Route("/api/actions/{action}", self.action, methods=["POST"]),
                Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
            ],
            middleware=[Middleware(_Headers)],
        )

    def _page(
        self, template: str, request: Request, status: int = 200, **context: Any
    ) -> HTMLResponse:
        s = self.mgmt.settings
        html = self.env.get_template(template).render(
            request=request,
            service=s.service_name,
            namespace=s.namespace,
            path=request.url.path,
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def _mask(self, data: Any) -> Any:
        return self.mgmt.sealer.mask(data)

    # -- pages -----------------------------------------------------------------------------

    async def workflows(self, request: Request) -> Response:
        q = request.query_params
        search = (q.get("q") or "").strip()
        if search and await self.mgmt.status(search) is not None:
            return RedirectResponse(f"/workflows/{search}", status_code=303)
        workflow = q.get("workflow") or None
        status = q.get("status") or None
        if status is not None and status not in {s.value for s in WorkflowState}:
            status = None
        page = await self.mgmt.list(
            workflow,
            status,
            since=_since(q.get("since")),
            limit=PAGE,
            cursor=q.get("cursor") or None,
        )
        counts = await self.mgmt._st.count_workflows(workflow)
        context = {
            "items": page.items,
            "next_cursor": page.next_cursor,
            "counts": {s.value: counts.get(s.value, 0) for s in WorkflowState},
            "total": sum(counts.values()),
            "filters": {
                "workflow": workflow or "",
                "status": status or "",
                "since": q.get("since") or "",
            },
            "names": sorted(self.mgmt.workflows),
            "not_found": search or None,
        }
        fragment = "_workflows.html" if q.get("fragment") else "workflows.html"
        return self._page(fragment, request, 200, **context)

    async def workflow(self, request: Request) -> Response:
        wid = request.path_params["workflow_id"]
        status = await self.mgmt.status(wid)
        if status is None:
            return self._page("missing.html", request, 404, what=f"workflow {wid!r}")
        history = [self._mask(e.model_dump(mode="json")) for e in await self.mgmt.history(wid)]
        wf = self.mgmt.workflows.get(status.workflow)
        steps = []
        for s in status.steps:
            steps.append(
                {
                    "s": s,
                    "duration": _duration(s.started_at, s.finished_at) if s.started_at else "–",
                }
            )
        context = {
            "st": status,
            "steps": steps,
            "payload": self._mask(status.payload),
            "result": self._mask(status.result),
            "history": history,
            "step_names": list(wf.steps) if wf is not None else [],
        }
        fragment = "_workflow.html" if request.query_params.get("fragment") else "workflow.html"
        return self._page(fragment, request, 200, **context)

    async def dead_letters(self, request: Request) -> Response:
        q = request.query_params
        found = await letters(
            self.mgmt, reason=q.get("reason") or None, since=_since(q.get("since"))
        )
        rows = [
            {
                "id": x.id,
                "letter": x.letter,
                "original": self._mask(x.letter.original),
            }
            for x in reversed(found)
        ]
        return self._page(
            "dead_letters.html",
            request,
            rows=rows,
            filters={"reason": q.get("reason") or "", "since": q.get("since") or ""},
        )

    async def health(self, request: Request) -> Response:
        raw = await self.mgmt._st.load_health()
        report = HealthReport.model_validate(raw) if raw is not None else None
        problems = report.problems() if report is not None else []
        return self._page("health.html", request, report=report, problems=problems)

    async def definitions(self, request: Request) -> Response:
        registry = self.mgmt._registry
        current = {name: wf.version for name, wf in registry.workflows.items()}
        defs = [
            {
                "wf": wf,
                "diagram": mermaid(wf),
                "current": current.get(wf.name) == wf.version,
                "schedules": [s for s in self.mgmt.schedules.values() if s.workflow == wf.name],
            }
            for wf in registry.definitions()
        ]
        return self._page("definitions.html", request, defs=defs)

    # -- data ------------------------------------------------------------------------------

    async def counts(self, request: Request) -> Response:
        counts = await self.mgmt._st.count_workflows(request.query_params.get("workflow"))
        return JSONResponse({s.value: counts.get(s.value, 0) for s in WorkflowState})

    async def why(self, request: Request) -> Response:
        wid = request.path_params["workflow_id"]
        try:
            found = await explain(self.mgmt, wid, app="APP")
        except NotFoundError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse([self._mask(r.as_dict()) for r in found])

    # -- live ------------------------------------------------------------------------------

    def _changed(self, changes: Sequence[Change] | None) -> None:
        for queue in self._subscribers:
            queue.put_nowait(changes)

    async def events(self, request: Request) -> Response:
        """Server-Sent Events: ``changed`` with the workflow ids the projection changed
        (``"*"``: anything may have), at most every :data:`LIVE_EVERY` seconds."""
        if not self._watching:
            self._watching = True
            await self.mgmt._st.watch(self._changed)
        queue: asyncio.Queue[Sequence[Change] | None] = asyncio.Queue()
        self._subscribers.add(queue)

        async def stream() -> AsyncIterator[bytes]:
            try:
                # What changed between the page's render and this subscription (or while
                # the page was reconnecting) would be missed: have it look once now.
                yield b'retry: 2000\nevent: changed\ndata: {"changed": ["*"]}\n\n'
                while True:
                    try:
                        first = await asyncio.wait_for(queue.get(), 15.0)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    await asyncio.sleep(LIVE_EVERY)
                    batch = [first]
                    while not queue.empty():
                        batch.append(queue.get_nowait())
                    if any(b is None for b in batch):
                        ids: list[str] = ["*"]
                    else:
                        ids = sorted({wid for b in batch if b is not None for wid, _ in b})
                    data = json.dumps({"changed": ids})
                    yield f"event: changed\ndata: {data}\n\n".encode()
            finally:
                self._subscribers.discard(queue)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    # -- actions ---------------------------------------------------------------------------

    def _refused(self, request: Request) -> Response | None:
        if self.token is None:
            return JSONResponse(
                {"error": "the console is read-only: set HMS_UI__TOKEN to enable actions"},
                status_code=403,
            )
        given = request.headers.get("x-hms-token", "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return JSONResponse({"error": "missing or wrong token"}, status_code=403)
        return None

    async def action(self, request: Request) -> Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        name = request.path_params["action"]
        try:
            if name == "cancel":
                ok = await self.mgmt.cancel(str(body["workflow_id"]), body.get("reason") or None)
                return JSONResponse(
                    {
                        "ok": ok,
                        "message": "cancellation requested" if ok else "it has already ended",
                    }
                )
            if name == "redrive":
                ok = await self.mgmt.redrive(
                    str(body["workflow_id"]), body.get("from_step") or None
                )
                return JSONResponse(
                    {
                        "ok": ok,
                        "message": "it runs again"
                        if ok
                        else "not failed or cancelled: nothing to redrive",
                    }
                )
            if name == "signal":
                data = body.get("data")
                if isinstance(data, str):
                    data = json.loads(data) if data.strip() else None
                ok = await self.mgmt.signal(
                    str(body["workflow_id"]),
                    str(body["name"]),
                    data,
                    signal_id=body.get("signal_id") or None,
                )
                return JSONResponse(
                    {"ok": ok, "message": "signal recorded" if ok else "it has already ended"}
                )
            if name == "redrive-letter":
                found = await letters(self.mgmt, ids=frozenset({str(body["letter_id"])}))
                if not found:
                    return JSONResponse({"error": "no such dead letter"}, status_code=404)
                ok, what = await redrive_letter(self.mgmt, found[0])
                return JSONResponse({"ok": ok, "message": what})
        except KeyError as exc:
            return JSONResponse({"error": f"missing field {exc.args[0]!r}"}, status_code=400)
        except json.JSONDecodeError as exc:
            return JSONResponse(
                {"error": f"the signal's data is not JSON: {exc.msg}"}, status_code=400
            )
        except NotFoundError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except (ConfigError, HmsBusError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"error": f"unknown action {name!r}"}, status_code=404)


def create_app(mgmt: Management, *, token: str | None = None) -> Starlette:
    """The console of ``mgmt`` (entered: a client), actions enabled by ``token``."""
    return Console(mgmt, token=token).app()


def console_server(mgmt: Management, *, host: str, port: int, token: str | None) -> StatusServer:
    """The console of ``mgmt`` on ``host:port`` (``hms-bus ui``), beside ``/healthz`` of
    the console's own process, on the HTTP server of the roles' ``/healthz``."""
    console = create_app(mgmt, token=token)
    return StatusServer(host, port, health=mgmt.health, routes=[Mount("/", app=console)])
