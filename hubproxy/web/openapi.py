"""The OpenAPI 3.1 description of the hub's JSON API, served at ``/_hub/api/openapi.json``.

Kept apart from the handlers (``hubproxy/addons/statusapi.py``) and checked against them by the
API tests; the prose reference is docs/api.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hubcontrol import STATES

_NULLABLE_INT = {"type": ["integer", "null"]}
_NULLABLE_NUM = {"type": ["number", "null"]}
_NULLABLE_STR = {"type": ["string", "null"]}
_STATES = list(STATES)

ENTRY = {
    "type": "object",
    "required": [
        "user",
        "template",
        "state",
        "net_id",
        "service_ip",
        "routes",
        "idle_seconds",
        "disk_bytes",
        "containers_running",
        "images",
        "checkpoint_failures",
    ],
    "properties": {
        "user": {"type": "string", "description": "the OAuth username"},
        "name": {"type": "string", "description": "the safe name used on disk and in URLs"},
        "template": {"type": "string"},
        "state": {"type": "string", "enum": _STATES},
        "net_id": _NULLABLE_INT,
        "service_ip": _NULLABLE_STR,
        "routes": {
            "type": "object",
            "additionalProperties": {"type": "string", "format": "uri"},
            "description": "route prefix -> <scheme>://<prefix>.<base-domain>/",
        },
        "idle_seconds": {**_NULLABLE_NUM, "description": "null unless running"},
        "last_activity": {**_NULLABLE_NUM, "description": "epoch seconds"},
        "activity_kind": {
            "type": ["string", "null"],
            "enum": ["http", "ws-in", "ws-out", "start", None],
        },
        "cull_in_seconds": {**_NULLABLE_NUM, "description": "null without --idle-timeout"},
        "idle_reason": {**_NULLABLE_STR, "description": "the idle culler's latest decision"},
        "disk_bytes": {**_NULLABLE_INT, "description": "workspace + data-root, sampled"},
        "disk_partial": {
            "type": "boolean",
            "description": "disk_bytes is a lower bound: the sampler's walk stopped at its bound "
            "(hubcontrol.du: 100,000 entries or 2 s per directory tree)",
        },
        "workspace_bytes": _NULLABLE_INT,
        "data_root_bytes": _NULLABLE_INT,
        "containers_running": {**_NULLABLE_INT, "description": "as `docker ps` counts them"},
        "images": {**_NULLABLE_INT, "description": "distinct image IDs, as `docker images`"},
        "stats_sampled_at": _NULLABLE_NUM,
        "per_user_docker": {"type": "boolean"},
        "checkpoint_enabled": {"type": "boolean"},
        "checkpoint_failures": {"type": "integer"},
        "checkpoint_disabled": {"type": "boolean"},
        "checkpoint_error": _NULLABLE_STR,
        "error": _NULLABLE_STR,
    },
}

_ERROR = {
    "description": "error",
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"error": {"type": "string"}}}
        }
    },
}
_USER_PARAM = {
    "name": "user",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "username or safe name",
}
_ACTION_RESULT = {
    "type": "object",
    "properties": {
        "user": {"type": "string"},
        "action": {"type": "string"},
        "state": {"type": "string"},
    },
}


def _action(
    summary: str, code: str = "200", params: Iterable[dict[str, Any]] = ()
) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "parameters": [_USER_PARAM, *params],
            "security": [{"session": [], "csrf": []}, {"adminToken": []}],
            "responses": {
                code: {
                    "description": "done" if code == "200" else "accepted, starting",
                    "content": {"application/json": {"schema": _ACTION_RESULT}},
                },
                "401": _ERROR,
                "403": _ERROR,
                "404": _ERROR,
            },
        }
    }


def openapi_document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Hub API", "version": "1"},
        "components": {
            "schemas": {"UserEntry": ENTRY},
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "rediacc_hub_session"},
                "csrf": {"type": "apiKey", "in": "header", "name": "X-Hub-CSRF"},
                "adminToken": {"type": "http", "scheme": "bearer"},
            },
        },
        "paths": {
            "/_hub/api/status": {
                "get": {
                    "summary": "Environments the caller may see",
                    "security": [{"session": []}, {"adminToken": []}],
                    "responses": {
                        "200": {
                            "description": "status",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["users"],
                                        "properties": {
                                            "users": {
                                                "type": "array",
                                                "items": {"$ref": "#/components/schemas/UserEntry"},
                                            },
                                            "viewer": {"type": "object"},
                                            "templates": {
                                                "type": "array",
                                                "items": {"type": "string"},
                                            },
                                            "default_template": {"type": "string"},
                                            "idle_timeout_seconds": {"type": "number"},
                                            "stats_interval_seconds": _NULLABLE_NUM,
                                            "refreshed_at": _NULLABLE_NUM,
                                            "now": {"type": "number"},
                                        },
                                    }
                                }
                            },
                        },
                        "401": _ERROR,
                    },
                }
            },
            "/_hub/api/users/{user}": {
                "get": {
                    "summary": "One environment",
                    "parameters": [_USER_PARAM],
                    "security": [{"session": []}, {"adminToken": []}],
                    "responses": {
                        "200": {
                            "description": "entry",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/UserEntry"}
                                }
                            },
                        },
                        "401": _ERROR,
                        "403": _ERROR,
                        "404": _ERROR,
                    },
                }
            },
            "/_hub/api/users/{user}/stop": _action("Stop without a checkpoint (own, or admin)"),
            "/_hub/api/users/{user}/checkpoint": _action("CRIU-checkpoint and stop (admin)"),
            "/_hub/api/users/{user}/checkpoint-reset": _action(
                "Turn checkpointing back on after three failures in a row (admin)"
            ),
            "/_hub/api/users/{user}/restart": _action(
                "Stop if running and start again, optionally with another template",
                "202",
                [
                    {
                        "name": "template",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    }
                ],
            ),
            "/_hub/health": {
                "get": {
                    "summary": "Liveness and readiness (public; any Host)",
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "not ready"},
                    },
                }
            },
            "/_hub/metrics": {
                "get": {
                    "summary": "Prometheus text (admin token, admin session, or a direct local connection)",
                    "responses": {"200": {"description": "text/plain; version=0.0.4"}},
                }
            },
        },
    }
