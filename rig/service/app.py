"""The service's HTTP API (FastAPI): sessions, calls, leases, faults, the event stream.

Every route is a thin translation to :class:`~rig.service.hub.Hub`; errors come back as
``{"error": <class>, "message": ...}`` with 400 (the test is wrong), 409 (leased elsewhere),
499 (cancelled) or 500/503 (equipment), and the client raises the same class.
"""

from __future__ import annotations

import json
import queue
import secrets
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Body, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..core.errors import Cancelled, InfrastructureError, LeaseError, RigError, TestError
from . import codec
from .hub import Hub

JsonBody = Annotated[dict[str, Any], Body()]
OptBody = Annotated[dict[str, Any] | None, Body()]


def _status_of(e: BaseException) -> int:
    if isinstance(e, LeaseError):
        return 409
    if isinstance(e, TestError):
        return 400
    if isinstance(e, Cancelled):
        return 499
    if isinstance(e, InfrastructureError):
        return 503
    return 500


def make_app(hub: Hub, token: str | None = None) -> FastAPI:
    app = FastAPI(title="posrig rig service", version="1")

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Any:
        if token is not None:
            got = request.headers.get("authorization", "")
            if not secrets.compare_digest(got, f"Bearer {token}"):
                return JSONResponse({"error": "TestError",
                                     "message": "this rig service needs its token (see the "
                                                "results dir's <lab>-service.token)"}, 401)
        return await call_next(request)

    @app.exception_handler(RigError)
    async def _rig_error(request: Request, e: RigError) -> JSONResponse:
        return JSONResponse(codec.error_to_wire(e), _status_of(e))

    @app.get("/v1/status")
    def status() -> dict[str, Any]:
        return hub.status()

    @app.post("/v1/sessions")
    def open_session(body: JsonBody) -> dict[str, Any]:
        c = hub.open_client(label=body.get("label"), pid=body.get("pid"),
                            host=str(body.get("host", "?")), user=str(body.get("user", "?")),
                            kind=str(body.get("kind", "client")), note=body.get("note"))
        return {"sid": c.sid, "run_id": c.session.run_id, "heartbeat_s": hub.heartbeat_s,
                "lab": hub.cfg.name, "terminals": hub.bench.terminals,
                "store": str(hub.bench.store.path), "journal": str(hub.bench.journal_path),
                "results": str(hub.bench.results), "config": hub.cfg.snapshot(), "config_digest": hub.cfg.digest()}

    @app.delete("/v1/sessions/{sid}")
    def close_session(sid: str, state: str = "completed") -> dict[str, Any]:
        hub.close_client(sid, state, "closed by its client")
        return {"ok": True}

    @app.post("/v1/sessions/{sid}/heartbeat")
    def heartbeat(sid: str) -> dict[str, Any]:
        c = hub.client(sid)
        return {"ok": True, "progress": c.progress}

    @app.post("/v1/sessions/{sid}/cancel")
    def cancel(sid: str, body: OptBody = None) -> dict[str, Any]:
        hub.cancel(sid, (body or {}).get("terminals"))
        return {"ok": True}

    @app.post("/v1/sessions/{sid}/call/{method}")
    def call(sid: str, method: str, body: OptBody = None) -> Any:
        try:
            result = hub.call(sid, method, body or {})
        except KeyboardInterrupt as e:  # a cancel: not the server's own Ctrl-C
            return JSONResponse(codec.error_to_wire(Cancelled(str(e) or "cancelled")), 499)
        return {"result": codec.encode(result)}

    @app.post("/v1/sessions/{sid}/leases")
    def lease(sid: str, body: JsonBody) -> dict[str, Any]:
        return hub.lease(sid, list(body.get("terminals", [])), body.get("note"))

    @app.delete("/v1/sessions/{sid}/leases/{lease_id}")
    def unlease(sid: str, lease_id: int) -> dict[str, Any]:
        hub.unlease(sid, lease_id)
        return {"ok": True}

    @app.post("/v1/sessions/{sid}/faults")
    def arm(sid: str, body: JsonBody) -> dict[str, Any]:
        return hub.arm(sid, str(body["terminal"]), list(body["faults"]))

    @app.delete("/v1/sessions/{sid}/faults/{handle}")
    def disarm(sid: str, handle: int) -> dict[str, Any]:
        return {"occurrences": hub.disarm(sid, handle)}

    @app.get("/v1/events")
    def events(follow: bool = False, terminal: str | None = None) -> StreamingResponse:
        """Server-sent events: the recent timeline (``follow=false``) or live from now."""

        def keep(item: dict[str, Any]) -> bool:
            return terminal is None or item.get("terminal") in (None, terminal)

        def stream() -> Iterator[str]:
            if not follow:
                for item in hub.bus.recent():
                    if keep(item):
                        yield f"data: {json.dumps(item)}\n\n"
                return
            with hub.bus.subscribe() as q:
                while not hub.stopping.is_set():
                    try:
                        item = q.get(timeout=1.0)
                    except queue.Empty:
                        yield ": keep-alive\n\n"
                        continue
                    if keep(item):
                        yield f"data: {json.dumps(item)}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.get("/v1/campaigns")
    def campaigns() -> list[dict[str, Any]]:
        return hub.list_campaigns()

    @app.post("/v1/campaigns")
    def start_campaign(body: JsonBody) -> dict[str, Any]:
        return hub.start_campaign(str(body["path"]))

    @app.get("/v1/campaigns/{run_id}")
    def campaign(run_id: int) -> dict[str, Any]:
        return hub.campaign_status(run_id)

    @app.post("/v1/campaigns/{run_id}/stop")
    def stop_campaign(run_id: int) -> dict[str, Any]:
        return hub.stop_campaign(run_id)

    @app.post("/v1/campaigns/{run_id}/resume")
    def resume_campaign(run_id: int) -> dict[str, Any]:
        return hub.start_campaign(resume=run_id)

    @app.get("/v1/schedules")
    def schedules() -> list[dict[str, Any]]:
        return hub.scheduler.schedules()

    @app.post("/v1/schedules")
    def install_schedules(body: JsonBody) -> list[dict[str, Any]]:
        return hub.install_schedules(str(body["path"]))

    @app.delete("/v1/schedules")
    def clear_schedules() -> dict[str, Any]:
        return {"cleared": hub.clear_schedules()}

    @app.post("/v1/shutdown")
    def shutdown() -> dict[str, Any]:
        hub.stopping.set()
        return {"ok": True}

    from . import metrics, page  # the live page `/`, `/v1/live` and `/metrics`

    collector = metrics.HubCollector(hub)
    app.include_router(metrics.router(collector))
    page.mount(app, hub, collector.tally)
    return app
