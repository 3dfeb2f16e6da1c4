"""`foster serve`: one FastAPI app with the run API, the bundle API, drop-in serving and the Gradio app.

    /v1/runs ...          start, list, watch (server-sent events), cancel runs; their best bundle
    /v1/bundles ...       every bundle in a run or in foster_home()/bundles
    /v1/deployments ...   a bundle under an alias, optionally shadowed by the live teacher
    /v1/chat/completions, /v1/completions, /v1/models   OpenAI-compatible (ui.openai_api)
    /ui                   the Gradio app (ui.gradio_app)

`create_app()` builds the app and `serve()` runs it, so tests and benchmarks mount the same app
on their own server. When FOSTER_API_TOKEN is set every /v1 route wants `Authorization: Bearer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
from pathlib import Path as FilePath
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

import foster.agent  # noqa: F401  (offline environment before litellm, chromadb or gradio load)
from foster.agent.config import RunRequest
from foster.store.paths import ID_PATTERN
from foster.prompts.bundle import Bundle
from foster.ui import openai_api
from foster.ui.catalog import SAFE_ID, bundles_dir, catalog
from foster.ui.deployments import (
    NAME_PATTERN,
    Deployment,
    DeploymentError,
    DeploymentRequest,
    deployment_store,
    divergences,
    warm_up,
)
from foster.ui.errors import ApiError, install_error_handlers

TOKEN_ENV = "FOSTER_API_TOKEN"
TERMINAL = ("done", "failed", "cancelled", "stopped")

RunId = Annotated[str, Path(pattern=ID_PATTERN, max_length=128, description="a run id (see GET /v1/runs)")]
BundleId = Annotated[str, Path(pattern=SAFE_ID, max_length=200, description="a bundle id (see GET /v1/bundles)")]
DeploymentName = Annotated[str, Path(pattern=NAME_PATTERN, description="a deployment name")]
Format = Annotated[str, Query(pattern="^(json|md)$", description="json (the bundle) or md (its readable sidecar)")]

_bearer = HTTPBearer(auto_error=False, description=f"required when {TOKEN_ENV} is set on the server")


def _token_checker(token: str | None):
    async def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        expected = token if token is not None else os.environ.get(TOKEN_ENV)
        if not expected:
            return
        given = credentials.credentials if credentials else ""
        if not secrets.compare_digest(given.encode(), expected.encode()):
            raise ApiError(401, "missing or wrong bearer token: send `Authorization: Bearer <FOSTER_API_TOKEN>`",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    return require_token


def _registry():
    from foster.store.runs import RunRegistry

    return RunRegistry()


def _status_or_404(run_id: str):
    try:
        status = _registry().get(run_id)
    except ValueError:  # the path pattern cannot say "no '..'"; the registry's id check can
        status = None
    if status is None:
        raise ApiError(404, f"no run {run_id!r} (see GET /v1/runs)", code="run_not_found", param="run_id")
    return status


def _report_summary(run_id: str) -> dict | None:
    report = _registry().read_json(run_id, "report.json")
    if not isinstance(report, dict):
        return None
    keys = ("verdict", "threshold", "ceiling", "answer_kind", "fidelity_method", "held_out", "train", "wall_seconds", "best_bundle")
    summary = {k: report[k] for k in keys if k in report}
    summary["targets"] = {
        target: {"best": (s.get("best") or {}).get("fidelity"), "best_variant": (s.get("best") or {}).get("variant"),
                 "zero_shot": (s.get("zero_shot") or {}).get("fidelity"), "calibration_gap": s.get("calibration_gap"),
                 "sampled_agreement": s.get("sampled_agreement")}
        for target, s in (report.get("targets") or {}).items() if isinstance(s, dict)
    }
    return summary


def _bundle_response(path: FilePath, fmt: str) -> Response:
    if fmt == "md":
        md = path.with_suffix(".md")
        if not md.is_file():
            raise ApiError(404, f"bundle {path.stem} has no Markdown sidecar", code="bundle_not_found")
        return PlainTextResponse(md.read_text(encoding="utf-8"), media_type="text/markdown; charset=utf-8")
    return Response(path.read_bytes(), media_type="application/json")


# ---------------------------------------------------------------------------------------------
# Runs


runs = APIRouter(prefix="/runs", tags=["runs"])


@runs.post("", status_code=202, summary="Start a distillation run in the background")
async def start_run(request: RunRequest) -> dict:  # type: ignore[valid-type]
    """The body is the CLI's options without endpoints: models by alias (the server's models file) or
    provider string, files as `uploads` or paths inside the server's data directory. Returns at once
    with the run id; watch GET /v1/runs/{id}/events for progress."""
    from pydantic import ValidationError

    from foster.agent import runs as agent_runs
    from foster.agent.config import InputError, run_config_from_request
    from foster.ui.errors import validation_message

    try:
        config = await anyio.to_thread.run_sync(run_config_from_request, request)
        run_id = await anyio.to_thread.run_sync(lambda: agent_runs.start_run(config, background=True))
    except ValidationError as exc:
        message, param = validation_message(exc.errors())
        raise ApiError(422, message, code="invalid_body", param=param) from exc
    except InputError as exc:
        raise ApiError(422, f"invalid request: {exc}", code="invalid_body") from exc
    return {"run_id": run_id, "status": "queued", "events": f"/v1/runs/{run_id}/events"}


@runs.get("", summary="List runs, newest first")
async def list_runs(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
    statuses = _registry().list()[:limit]
    return {"object": "list", "data": [s.model_dump() for s in statuses]}


@runs.get("/{run_id}", summary="A run's status, current node, progress per node and figures")
async def get_run(run_id: RunId) -> dict:
    status = _status_or_404(run_id)
    return {**status.model_dump(), "report": _report_summary(run_id)}


@runs.get("/{run_id}/report", summary="A run's full evaluation report (report.json)")
async def get_report(run_id: RunId) -> Any:
    _status_or_404(run_id)
    report = _registry().read_json(run_id, "report.json")
    if report is None:
        raise ApiError(404, f"run {run_id} has no report yet", code="report_not_found")
    return report


@runs.get("/{run_id}/grid", summary="A run's comparison grid (grid.json): held-out probes x variants")
async def get_grid(run_id: RunId) -> Any:
    _status_or_404(run_id)
    grid = _registry().read_json(run_id, "grid.json")
    if grid is None:
        raise ApiError(404, f"run {run_id} has no grid yet (written by the evaluate node)", code="grid_not_found")
    return grid


async def _tail_events(request: Request, run_id: str, after: int, follow: bool, poll: float = 0.25,
                       heartbeat: float = 15.0):
    """events.jsonl as server-sent events (id = the event's line number), until the run ends."""
    registry = _registry()
    path = registry.run_dir(run_id) / "events.jsonl"
    offset, index, pending = 0, 0, b""
    last_sent = time.monotonic()
    while True:
        finished = (status := registry.get(run_id)) is None or status.status in (*TERMINAL, "interrupted")
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            data = b""
        offset += len(data)
        pending += data
        *lines, pending = pending.split(b"\n")  # a line still being written stays pending
        for line in lines:
            if not line.strip():
                continue
            index += 1
            if index <= after:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            last_sent = time.monotonic()
            yield f"id: {index}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n".encode()
        if not follow or (finished and not lines):
            yield b"event: end\ndata: {}\n\n"
            return
        if await request.is_disconnected():
            return
        if time.monotonic() - last_sent > heartbeat:
            last_sent = time.monotonic()
            yield b": keep-alive\n\n"
        await asyncio.sleep(poll)


@runs.get(
    "/{run_id}/events",
    summary="A run's progress events as server-sent events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "one `data:` JSON event per line of events.jsonl"}},
)
async def run_events(
    request: Request,
    run_id: RunId,
    after: Annotated[int, Query(ge=0, description="skip this many events (or send Last-Event-ID)")] = 0,
    follow: Annotated[bool, Query(description="keep the stream open until the run ends")] = True,
):
    _status_or_404(run_id)
    last_id = request.headers.get("last-event-id", "")
    if last_id.isdigit():
        after = max(after, int(last_id))
    return StreamingResponse(_tail_events(request, run_id, after, follow), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


@runs.post("/{run_id}/cancel", status_code=202, summary="Ask a run to stop (it keeps its best bundle so far)")
async def cancel_run(run_id: RunId) -> dict:
    from foster.agent import runs as agent_runs

    status = _status_or_404(run_id)
    if status.status in TERMINAL:
        raise ApiError(409, f"run {run_id} already ended ({status.status})", code="run_ended")
    await anyio.to_thread.run_sync(agent_runs.cancel_run, run_id)
    return {"run_id": run_id, "status": status.status, "cancel_requested": True}


@runs.get("/{run_id}/bundle", summary="A run's best bundle", responses={200: {"content": {"application/json": {}, "text/markdown": {}}}})
async def run_bundle(run_id: RunId, format: Format = "json") -> Response:
    status = _status_or_404(run_id)
    path = FilePath(status.best_bundle) if status.best_bundle else _registry().run_dir(run_id) / "best_bundle.json"
    if not path.is_file():
        raise ApiError(404, f"run {run_id} has no best bundle yet (status: {status.status})", code="bundle_not_found")
    return _bundle_response(path, format)


# ---------------------------------------------------------------------------------------------
# Bundles


bundles = APIRouter(prefix="/bundles", tags=["bundles"])


@bundles.get("", summary="Every bundle: each run's exports and foster_home()/bundles")
async def list_bundles(run_id: Annotated[str | None, Query(max_length=200)] = None) -> dict:
    entries = await anyio.to_thread.run_sync(catalog().entries)
    if run_id is not None:
        entries = [e for e in entries if e.run_id == run_id]
    return {"object": "list", "data": [e.summary() for e in entries]}


@bundles.get("/{bundle_id}", summary="One bundle by id", responses={200: {"content": {"application/json": {}, "text/markdown": {}}}})
async def get_bundle(bundle_id: BundleId, format: Format = "json") -> Response:
    entry = catalog().find(bundle_id)
    if entry is None:
        raise ApiError(404, f"no bundle {bundle_id!r} (see GET /v1/bundles)", code="bundle_not_found", param="bundle_id")
    return _bundle_response(entry.path, format)


@bundles.get(
    "/{bundle_id}/export",
    summary="A bundle as a file for OpenAI, LangChain, DSPy or promptfoo",
    responses={200: {"content": {"application/json": {}, "text/x-python": {}, "application/yaml": {}},
                     "description": "the exported file (Content-Disposition names it)"},
               404: {"description": "no such bundle"}, 422: {"description": "unknown format"}},
)
async def export_bundle(
    bundle_id: BundleId,
    format: Annotated[str, Query(pattern="^(openai|langchain|dspy|promptfoo)$", description="the tool to export for")],
) -> Response:
    """What `foster export` writes; a bundle inside a run also gets that run's held-out probes
    (promptfoo's tests) and sampling parameters."""
    from foster.prompts.export import export_bundle as export, run_context, run_dir_of

    entry = catalog().find(bundle_id)
    bundle = catalog().load(bundle_id) if entry is not None else None
    if entry is None or bundle is None:
        raise ApiError(404, f"no bundle {bundle_id!r} (see GET /v1/bundles)", code="bundle_not_found", param="bundle_id")
    exported = await anyio.to_thread.run_sync(lambda: export(bundle, format, run_context(run_dir_of(entry.path))))
    return Response(exported.text, media_type=exported.media_type,
                    headers={"content-disposition": f'attachment; filename="{exported.filename}"'})


@bundles.post("", status_code=201, summary="Publish a bundle (saved to foster_home()/bundles/<id>.json)")
async def publish_bundle(bundle: Bundle) -> dict:
    """The body is a bundle document (as Bundle.save writes it); it is validated, refused if it
    carries a key or an endpoint or targets an unknown provider, and becomes servable under its
    content hash (any `id` in the body is ignored)."""
    from foster.store.paths import inside_home

    from foster.agent.config import InputError, check_api_model

    for i, target in enumerate(bundle.targets):  # a target no provider serves would only answer 503 later
        try:
            check_api_model(target, f"targets.{i}")
        except InputError as exc:
            raise ApiError(422, f"invalid request: {exc}", code="invalid_body", param=f"targets.{i}") from exc
        await anyio.to_thread.run_sync(_check_model, target, f"targets.{i}")
    bundle_id = bundle.content_hash()  # never the body's id: an id names a file
    try:
        path = await anyio.to_thread.run_sync(
            lambda: bundle.model_copy(update={"id": bundle_id}).save(inside_home(bundles_dir() / bundle_id)))
    except ValueError as exc:  # e.g. a key assigned after validation
        raise ApiError(422, f"invalid request: {exc}", code="invalid_body") from exc
    catalog().invalidate()
    return {"id": bundle_id, "path": str(path)}


# ---------------------------------------------------------------------------------------------
# Deployments


deployments = APIRouter(prefix="/deployments", tags=["deployments"])


def _check_model(model: str, field: str) -> None:
    from foster.agent.gateway import UnknownModelError, check_model

    try:
        check_model(model)
    except UnknownModelError as exc:
        raise ApiError(422, f"invalid request: {field}: {exc}", code="invalid_body", param=field) from exc


def _deployment_error(exc: DeploymentError) -> ApiError:
    return ApiError(exc.status, exc.message, code=exc.code, param="name" if exc.status != 422 else "bundle_id")


def _responses(*codes: int) -> dict:
    described = {400: "invalid request", 404: "no such deployment or version", 409: "conflicts with the deployment's state",
                 422: "invalid body"}
    return {code: {"description": described[code]} for code in codes}


@deployments.post("", status_code=201, summary="Serve a bundle under a name, optionally shadowed by the teacher",
                  responses=_responses(409, 422))
async def put_deployment(
    deployment: DeploymentRequest,
    replace: Annotated[bool, Query(description="an existing name: serve this bundle as its next version "
                                               "(without it, an existing name is 409)")] = False,
) -> dict:
    if catalog().find(deployment.bundle_id) is None:
        raise ApiError(422, f"invalid request: bundle_id: no bundle {deployment.bundle_id!r} (see GET /v1/bundles)",
                       code="invalid_body", param="bundle_id")
    if deployment.target:
        await anyio.to_thread.run_sync(_check_model, deployment.target, "target")
    if deployment.shadow:
        await anyio.to_thread.run_sync(_check_model, deployment.shadow.teacher, "shadow.teacher")
    try:
        saved = deployment_store().create(deployment, replace=replace)
    except DeploymentError as exc:
        raise _deployment_error(exc) from exc
    bundle = catalog().load(saved.bundle_id)
    if bundle is not None:
        warm_up(bundle)
    return saved.model_dump()


@deployments.get("", summary="Every deployment")
async def list_deployments() -> dict:
    return {"object": "list", "data": [d.model_dump() for d in deployment_store().all()]}


def _deployment_or_404(name: str) -> Deployment:
    found = deployment_store().get(name)
    if found is None:
        raise ApiError(404, f"no deployment {name!r} (see GET /v1/deployments)", code="deployment_not_found", param="name")
    return found


@deployments.get("/{name:path}/divergences", summary="Where the shadowed teacher and the served bundle disagreed",
                 responses=_responses(404))
async def deployment_divergences(name: DeploymentName, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                                 version: Annotated[int | None, Query(ge=1)] = None) -> dict:
    _deployment_or_404(name)
    rows = await anyio.to_thread.run_sync(lambda: divergences(name, limit, version))
    return {"object": "list", "data": rows}


@deployments.get("/{name:path}/shadow", summary="Shadow statistics: requests, agreement with a 95 % interval, per cluster",
                 responses=_responses(404))
async def deployment_shadow(
    name: DeploymentName,
    version: Annotated[str | None, Query(pattern=r"^([1-9][0-9]{0,8}|all)$",
                                         description="a version number or `all` (default: the served version)")] = None,
) -> dict:
    from foster.ui.deployments import shadow_stats

    deployment = _deployment_or_404(name)
    chosen = "all" if version == "all" else (int(version) if version else None)
    stats = await anyio.to_thread.run_sync(lambda: shadow_stats(deployment, chosen))
    return {**stats.model_dump(), "served_version": deployment.active,
            "shadow": deployment.shadow.model_dump() if deployment.shadow else None}


@deployments.get("/{name:path}/readiness", summary="Ready to cut over? The gate's verdict and its reason",
                 responses=_responses(404))
async def deployment_readiness(
    name: DeploymentName,
    min_requests: Annotated[int | None, Query(ge=1, le=10**9, description="shadowed requests needed (default 30)")] = None,
    min_cluster_requests: Annotated[int | None, Query(ge=1, le=10**9, description="a cluster with this many requests "
                                                                                  "must pass too (default 10)")] = None,
    threshold: Annotated[float | None, Query(gt=0, le=1, description="default: the run's threshold")] = None,
) -> dict:
    from foster.ui.deployments import readiness

    deployment = _deployment_or_404(name)
    verdict = await anyio.to_thread.run_sync(lambda: readiness(
        deployment, min_requests=min_requests, min_cluster_requests=min_cluster_requests, threshold=threshold))
    return verdict.model_dump()


@deployments.post("/{name:path}/promote", summary="Serve a version (default: the newest) from now on, atomically",
                  responses=_responses(404, 409))
async def promote_deployment(name: DeploymentName,
                             version: Annotated[int | None, Query(ge=1, le=10**9, description="default: the newest")] = None) -> dict:
    _deployment_or_404(name)
    try:
        promoted = deployment_store().promote(name, version)
    except DeploymentError as exc:
        raise _deployment_error(exc) from exc
    bundle = catalog().load(promoted.bundle_id)
    if bundle is not None:
        warm_up(bundle)
    return promoted.model_dump()


@deployments.post("/{name:path}/rollback", summary="Serve again the version served before the current one",
                  responses=_responses(404, 409))
async def rollback_deployment(name: DeploymentName) -> dict:
    _deployment_or_404(name)
    try:
        return deployment_store().rollback(name).model_dump()
    except DeploymentError as exc:
        raise _deployment_error(exc) from exc


@deployments.post("/{name:path}/refine", status_code=202, responses=_responses(404, 409, 422),
                  summary="Start a run seeded with the deployment's divergent live inputs; it adds a version when done")
async def refine_deployment(name: DeploymentName) -> dict:
    from foster.agent.config import InputError
    from foster.ui.deployments import start_refine

    _deployment_or_404(name)
    try:
        plan = await anyio.to_thread.run_sync(lambda: start_refine(name, background=True))
    except DeploymentError as exc:
        raise _deployment_error(exc) from exc
    except InputError as exc:
        raise ApiError(409, f"cannot refine {name!r}: {exc}", code="cannot_refine", param="name") from exc
    return {**plan.model_dump(), "status": "queued", "events": f"/v1/runs/{plan.run_id}/events"}


@deployments.get("/{name:path}", summary="One deployment: its versions, the served one, its history",
                 responses=_responses(404))
async def get_deployment(name: DeploymentName) -> dict:
    return _deployment_or_404(name).model_dump()


@deployments.delete("/{name:path}", status_code=204, summary="Stop serving a deployment", responses=_responses(404))
async def delete_deployment(name: DeploymentName) -> Response:
    if not deployment_store().delete(name):
        raise ApiError(404, f"no deployment {name!r}", code="deployment_not_found", param="name")
    return Response(status_code=204)


# ---------------------------------------------------------------------------------------------
# The app


def _warm_deployments() -> None:
    for deployment in deployment_store().all():
        try:
            bundle = catalog().load(deployment.bundle_id)
        except Exception:  # a broken bundle file answers 404/500 on request, not at start-up
            continue
        if bundle is not None:
            warm_up(bundle)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI):
    await anyio.to_thread.run_sync(_warm_deployments)
    from foster.agent.worker import Worker, serve_runs_in_process

    # runs POSTed here are only enqueued; with nothing configured this thread executes them, with
    # FOSTER_POSTGRES_URL set `foster worker` processes do (FOSTER_SERVE_WORKER=1|0 overrides)
    worker = Worker() if serve_runs_in_process() else None
    if worker is not None:
        worker.start_thread()
    yield
    if worker is not None:
        worker.stop()


# Every status a /v1 route can answer is in the schema (clients and schemathesis read it).
_V1_RESPONSES: dict = {400: {"description": "a body that is not JSON"},
                       401: {"description": f"missing or wrong bearer token (when {TOKEN_ENV} is set)"},
                       413: {"description": "request body over the limit (FOSTER_MAX_BODY_BYTES / FOSTER_MAX_UPLOAD_BYTES)"},
                       422: {"description": "invalid request"}}
_SERVING_RESPONSES: dict = {400: {"description": "invalid request"}, 404: {"description": "no such model"},
                            502: {"description": "the model behind the deployment failed"},
                            503: {"description": "the model behind the deployment is not available"}}
BODY_LIMIT = 1_000_000  # bytes: a chat request or any small body
UPLOAD_LIMIT = 20_000_000  # bytes: a bundle, or a run with its input files uploaded
_UPLOAD_ROUTES = {("POST", "/v1/bundles"), ("POST", "/v1/runs")}


def _limit(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name) or default))
    except ValueError:
        return default


class BodyLimit:
    """Refuse a request body over the limit with 413 before any handler parses it (read per request from
    FOSTER_MAX_BODY_BYTES, default 1 MB; FOSTER_MAX_UPLOAD_BYTES, default 20 MB, for bundles and runs)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        upload = (scope["method"], scope["path"].rstrip("/")) in _UPLOAD_ROUTES
        limit = _limit("FOSTER_MAX_UPLOAD_BYTES", UPLOAD_LIMIT) if upload else _limit("FOSTER_MAX_BODY_BYTES", BODY_LIMIT)
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            return await self._refuse(scope, receive, send, limit)
        chunks, size = [], 0
        while True:  # the body is read (bounded) before the app sees it, so a lying Content-Length changes nothing
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await self._refuse(scope, receive, send, limit)
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope, receive, send, limit: int) -> None:
        from fastapi.responses import JSONResponse

        from foster.ui.errors import error_body

        response = JSONResponse(error_body(413, f"request body over {limit} bytes", "body_too_large"), status_code=413)
        await response(scope, receive, send)


def create_app(*, ui: bool = True, api_token: str | None = None) -> FastAPI:
    """The service: /v1 (runs, bundles, deployments, OpenAI-compatible serving) and /ui (Gradio).

    `api_token` overrides FOSTER_API_TOKEN (read on every request when not given). With a token,
    the Gradio app asks for it as its password (any user name).
    """
    app = FastAPI(
        lifespan=_lifespan,
        title="foster",
        version="0.1.0",
        description="Runs, bundles and deployments of foster, and an OpenAI-compatible endpoint that serves a "
        "bundle under the retired fine-tune's name.",
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimit)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(_token_checker(api_token))], responses=_V1_RESPONSES)
    v1.include_router(openai_api.router, tags=["openai"], responses=_SERVING_RESPONSES)  # first: routes match in order
    v1.include_router(runs, responses={404: {"description": "no such run, or it has no such file yet"},
                                       409: {"description": "the run already ended"}})
    v1.include_router(bundles, responses={404: {"description": "no such bundle"}})
    v1.include_router(deployments)
    app.include_router(v1)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict:
        return {"status": "ok"}

    if ui:
        import gradio as gr

        from foster.ui.gradio_app import create_ui, mount_options

        @app.get("/", include_in_schema=False)
        async def root() -> RedirectResponse:
            return RedirectResponse("/ui/")

        token = api_token if api_token is not None else os.environ.get(TOKEN_ENV)
        auth = (lambda _user, password: secrets.compare_digest(password.encode(), token.encode())) if token else None
        gr.mount_gradio_app(app, create_ui(), path="/ui", auth=auth, auth_message=f"Password: the server's {TOKEN_ENV}.",
                            **mount_options())
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, *, ui: bool = True, log_level: str = "info") -> None:
    """Run the service on uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(ui=ui), host=host, port=port, log_level=log_level)


def add_serve_arguments(parser) -> None:
    """`foster serve` options (an argparse parser or sub-parser)."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--no-ui", action="store_true", help="serve the API only, without the Gradio app at /ui")
    parser.add_argument("--models-file", "--models", dest="models", metavar="YAML",
                        help="models file for serving: deployments per model name (rpm, weights, fallbacks)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run_serve(args) -> int:
    """Start `foster serve` from parsed arguments."""
    from foster.agent.gateway import Models, use_models

    models = Models.load(args.models) if getattr(args, "models", None) else None
    if getattr(args, "models", None):  # runs started through the API take their endpoints from this file only
        os.environ["FOSTER_MODELS_FILE"] = str(FilePath(args.models).resolve())
    if args.host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get(TOKEN_ENV):
        print(f"warning: serving on {args.host} without {TOKEN_ENV}: anyone who reaches it can start runs")
    # the server's own models: request handlers and their worker threads inherit this context
    with use_models(models):
        serve(args.host, args.port, ui=not args.no_ui, log_level=args.log_level)
    return 0
