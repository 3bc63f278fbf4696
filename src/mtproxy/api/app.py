"""The API's routes: parse the request, call the operation in a worker thread, return its result as JSON.

Every route is one call into operations/ (the same function the CLI command calls). The store's lock and the
reload confirmation block, so they run in a thread and the event loop keeps answering. Requests are never
logged (a path may name a secret by value); errors are JSON {"error": {"message", "todo", "kind"}}.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..accounts.limits import NO_LIMITS, LimitsError
from ..operations.apply import ChangeReport
from ..operations.artifacts import links_for
from ..operations.context import Ops
from ..operations.errors import Failure, OpError
from ..operations.limit_ops import KEEP, LimitsPatch, SecretUpdate, reset_usage, set_ad_tag, set_enabled, update_secret
from ..operations.proxy_control import compare
from ..operations.secrets import AddRequest, add_secret, get_secret, list_secrets, regenerate_secret, remove_secret
from ..operations.usage_source import engine_snapshot
from ..store import TYPE_TO_KIND, StoreError, read_store

log = logging.getLogger("mtproxy.api")
PREFIX = "/api/v1"
MAX_BODY = 64 * 1024
API_VERSION = 1
OPS_KEY = web.AppKey("ops", Ops)
TOKEN_KEY = web.AppKey("token", str)
READ_ONLY_KEY = web.AppKey("read_only", bool)
_STATUS = {Failure.INVALID: 400, Failure.NOT_FOUND: 404, Failure.CONFLICT: 409, Failure.UNAVAILABLE: 503,
           Failure.FAILED: 500}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response({"version": API_VERSION, **payload}, status=status,
                             dumps=lambda doc: json.dumps(doc, ensure_ascii=False))


def _error(status: int, message: str, todo: str = "", kind: str = "") -> web.Response:
    response = _json({"error": {"message": message, "todo": todo, "kind": kind or str(status)}}, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="mtproxy"'
    return response


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Token first (401), then read-only (403); every failure becomes a JSON error."""
    given = request.headers.get("Authorization", "")
    scheme, _, token = given.partition(" ")
    wanted = request.app[TOKEN_KEY]
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), wanted.encode()):
        return _error(401, "missing or wrong bearer token", "send `Authorization: Bearer <token>` with the "
                      "token from `mtproxy api-token`", "unauthorized")
    if request.app[READ_ONLY_KEY] and request.method not in ("GET", "HEAD"):
        return _error(403, "this API runs read-only", "restart `mtproxy api` without --read-only to change "
                      "things", "read_only")
    try:
        return await handler(request)
    except OpError as exc:
        return _error(_STATUS[exc.failure], exc.what, exc.todo, exc.failure.value)
    except StoreError as exc:
        return _error(500, f"{exc.path}: {exc.problem}", f"{exc.hint}; the file was left untouched"
                      if exc.hint else "the file was left untouched", "store")
    except web.HTTPException as exc:
        return _error(exc.status, exc.reason, "see docs/api.openapi.json", "http")
    except Exception:
        # a bug: its traceback for the log, without the request (whose path may name a secret)
        log.exception("internal error in %s %s", request.method, request.match_info.route.resource
                      and request.match_info.route.resource.canonical)
        return _error(500, "internal error", "see the API's log and report the traceback", "internal")


async def _call(request: web.Request, operation: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(operation, request.app[OPS_KEY], *args)


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise OpError(f"the request body is larger than {MAX_BODY} bytes", "", Failure.INVALID)
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise OpError(f"the request body is larger than {MAX_BODY} bytes", "", Failure.INVALID)
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise OpError("the request body is not JSON", "send a JSON object", Failure.INVALID) from None
    if not isinstance(doc, dict):
        raise OpError("the request body must be a JSON object", "", Failure.INVALID)
    return doc


def _text(doc: dict[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise OpError(f"{key!r} must be a string", "", Failure.INVALID)
    return value


def _unknown(doc: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(doc) - allowed)
    if extra:
        raise OpError(f"unknown field(s) {', '.join(extra)}", f"allowed: {', '.join(sorted(allowed))}",
                      Failure.INVALID)


def _patch(doc: dict[str, Any]) -> LimitsPatch:
    if "limits" not in doc:
        return LimitsPatch()
    try:
        return LimitsPatch.from_json(doc["limits"])
    except LimitsError as exc:
        raise OpError(str(exc), "see docs/api.openapi.json", Failure.INVALID) from None


def _changed(request: web.Request, report: ChangeReport, with_value: bool = False) -> dict[str, Any]:
    record = report.record
    assert record is not None
    secret: dict[str, Any] = get_secret(request.app[OPS_KEY], record.id).to_json()
    if with_value:
        secret["value"] = record.value
        if report.server is not None:
            links = links_for(record, report.settings, report.server)
            secret["links"] = {"tg": links.tg, "https": links.https}
    return {"secret": secret, "proxy": {"message": report.apply.message, "live": report.apply.live,
                                        "failed": report.apply.failed}, "notes": report.notes}


# --------------------------------------------------------------------------------------------------- routes


async def health(request: web.Request) -> web.Response:
    return _json(await asyncio.to_thread(_health, request.app[OPS_KEY]))


def _health(ops: Ops) -> dict[str, Any]:
    try:
        data = read_store(ops.paths.secrets_file)
        store: dict[str, Any] = {"readable": True, "secrets": len(data.secrets),
                                 "active": len(data.active_records())}
    except StoreError as exc:
        return {"status": "failing", "store": {"readable": False, "error": f"{exc.path}: {exc.problem}"},
                "engine": None}
    engine = engine_snapshot(ops.paths)
    verdict = compare(engine, data) if engine is not None else None
    return {"status": "ok" if verdict is None or verdict.ok else "degraded", "store": store,
            "engine": None if verdict is None else {"serves_store": verdict.ok, "detail": verdict.detail}}


async def reload_status(request: web.Request) -> web.Response:
    return _json(await asyncio.to_thread(_reload_status, request.app[OPS_KEY]))


def _reload_status(ops: Ops) -> dict[str, Any]:
    data = read_store(ops.paths.secrets_file)
    engine = engine_snapshot(ops.paths)
    if engine is None:
        return {"engine": False, "in_sync": False, "detail": "no proxy answers for this root",
                "last_modified": data.last_modified}
    verdict = compare(engine, data)
    return {"engine": True, "in_sync": verdict.ok, "detail": verdict.detail, "last_modified": data.last_modified,
            "reloads_ok": engine.get("reloads_ok"), "reloads_failed": engine.get("reloads_failed"),
            "reload_error": engine.get("reload_error") or None}


async def secrets_list(request: web.Request) -> web.Response:
    listing = await _call(request, list_secrets)
    return _json({"secrets": [view.to_json() for view in listing.secrets], "last_modified": listing.last_modified})


async def secret_create(request: web.Request) -> web.Response:
    doc = await _body(request)
    _unknown(doc, {"type", "domain", "own_domain", "label", "description", "limits"})
    type_name = _text(doc, "type")
    if type_name is not None and type_name not in TYPE_TO_KIND:
        raise OpError(f"'type' must be plain, dd or ee, not {type_name!r}", "", Failure.INVALID)
    own_domain = doc.get("own_domain", False)
    if not isinstance(own_domain, bool):
        raise OpError("'own_domain' must be true or false", "", Failure.INVALID)
    try:
        limits = _patch(doc).apply(NO_LIMITS)
    except LimitsError as exc:
        raise OpError(str(exc), "", Failure.INVALID) from None
    request_ = AddRequest(TYPE_TO_KIND[type_name] if type_name is not None else None, _text(doc, "domain"),
                          _text(doc, "label"), _text(doc, "description") or "", limits, own_domain=own_domain)
    report = await _call(request, add_secret, request_)
    return _json(await asyncio.to_thread(_changed, request, report, True), 201)


async def secret_get(request: web.Request) -> web.Response:
    view = await _call(request, get_secret, request.match_info["ref"])
    return _json({"secret": view.to_json()})


async def secret_usage(request: web.Request) -> web.Response:
    view = await _call(request, get_secret, request.match_info["ref"])
    return _json({"id": view.record.id, "state": view.state, "usage": view.usage.to_json(),
                  "limits": view.record.limits.to_json(), "usage_reset_at": view.record.usage_reset_at or None})


async def secret_update(request: web.Request) -> web.Response:
    doc = await _body(request)
    _unknown(doc, {"label", "description", "limits"})
    label, description = _text(doc, "label"), _text(doc, "description")
    update = SecretUpdate(label=KEEP if label is None else label,
                          description=KEEP if description is None else description, limits=_patch(doc))
    report = await _call(request, update_secret, request.match_info["ref"], update)
    return _json(await asyncio.to_thread(_changed, request, report))


async def secret_delete(request: web.Request) -> web.Response:
    report = await _call(request, remove_secret, request.match_info["ref"])
    assert report.record is not None
    return _json({"deleted": report.record.id, "proxy": {"message": report.apply.message,
                                                         "live": report.apply.live, "failed": report.apply.failed}})


async def secret_disable(request: web.Request) -> web.Response:
    report = await _call(request, set_enabled, request.match_info["ref"], False)
    return _json(await asyncio.to_thread(_changed, request, report))


async def secret_enable(request: web.Request) -> web.Response:
    report = await _call(request, set_enabled, request.match_info["ref"], True)
    return _json(await asyncio.to_thread(_changed, request, report))


async def secret_reset_usage(request: web.Request) -> web.Response:
    report = await _call(request, reset_usage, request.match_info["ref"])
    return _json(await asyncio.to_thread(_changed, request, report))


async def secret_regenerate(request: web.Request) -> web.Response:
    report = await _call(request, regenerate_secret, request.match_info["ref"])
    return _json(await asyncio.to_thread(_changed, request, report, True))


async def secret_set_ad_tag(request: web.Request) -> web.Response:
    doc = await _body(request)
    _unknown(doc, {"ad_tag"})
    tag = _text(doc, "ad_tag")
    if tag is None:
        raise OpError("'ad_tag' is required: 32 hex digits", "to remove the tag, DELETE this resource",
                      Failure.INVALID)
    report = await _call(request, set_ad_tag, request.match_info["ref"], tag)
    return _json(await asyncio.to_thread(_changed, request, report))


async def secret_clear_ad_tag(request: web.Request) -> web.Response:
    report = await _call(request, set_ad_tag, request.match_info["ref"], None)
    return _json(await asyncio.to_thread(_changed, request, report))


ROUTES: list[tuple[str, str, Callable[[web.Request], Awaitable[web.Response]]]] = [
    ("GET", "/health", health),
    ("GET", "/reload", reload_status),
    ("GET", "/secrets", secrets_list),
    ("POST", "/secrets", secret_create),
    ("GET", "/secrets/{ref}", secret_get),
    ("PATCH", "/secrets/{ref}", secret_update),
    ("DELETE", "/secrets/{ref}", secret_delete),
    ("GET", "/secrets/{ref}/usage", secret_usage),
    ("POST", "/secrets/{ref}/disable", secret_disable),
    ("POST", "/secrets/{ref}/enable", secret_enable),
    ("POST", "/secrets/{ref}/reset-usage", secret_reset_usage),
    ("POST", "/secrets/{ref}/regenerate", secret_regenerate),
    ("PUT", "/secrets/{ref}/ad-tag", secret_set_ad_tag),
    ("DELETE", "/secrets/{ref}/ad-tag", secret_clear_ad_tag),
]


def build_app(ops: Ops, token: str, read_only: bool) -> web.Application:
    app = web.Application(middlewares=[_guard], client_max_size=MAX_BODY)
    app[OPS_KEY] = ops
    app[TOKEN_KEY] = token
    app[READ_ONLY_KEY] = read_only
    for method, path, handler in ROUTES:
        app.router.add_route(method, PREFIX + path, handler)
    return app
