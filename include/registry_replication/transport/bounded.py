"""Reading what a registry sends within bounds (``config.Bounds``).

A registry's answer is read only up to a size, and its JSON is refused past a nesting depth,
so that no answer, however large or deep, costs more than its bound: it becomes a
``LimitExceeded`` that names the object and the bound, and the caller's unit of work (one
image, one repository) fails alone.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from registry_replication.transport.errors import LimitExceeded

if TYPE_CHECKING:
    from registry_replication.transport.wire import Response

READ_CHUNK = 64 << 10


def read_body(response: Response, limit: int, setting: str, **where: Any) -> bytes:
    """The body of an unread ``response``, refused (and the connection dropped) past ``limit``.

    ``where``: the error's context (registry, operation, repository, reference).
    """
    if response.method == "HEAD":  # its Content-Length is the resource's; it has no body
        return b""
    declared = response.headers.get("Content-Length") or ""
    if declared.isdigit() and int(declared) > limit:
        response.close()
        raise _too_large(f"the answer declares {int(declared)} bytes", limit, setting, where)
    body = bytearray()
    for chunk in response.stream(READ_CHUNK):
        body += chunk
        if len(body) > limit:
            response.close()
            raise _too_large("the answer goes on past the bound", limit, setting, where)
    return bytes(body)


def loads(raw: bytes, max_depth: int, **where: Any) -> Any:
    """``raw`` parsed as JSON; a ``LimitExceeded`` when it nests deeper than ``max_depth``.

    Invalid JSON raises ``ValueError`` as ``json.loads`` does.
    """
    try:
        value = json.loads(raw)
    except RecursionError:  # deeper than the interpreter's stack allows, so past any bound
        depth = None
    else:
        depth = nesting_depth(value, max_depth)
    if depth is None or depth > max_depth:
        raise LimitExceeded(
            f"the JSON nests deeper than {max_depth} levels",
            code="LIMIT_EXCEEDED",
            setting="max_json_depth",
            limit=max_depth,
            **where,
        )
    return value


def nesting_depth(value: Any, stop_past: int) -> int:
    """How deep lists and objects nest in ``value`` (a scalar: 0), counted without recursion;
    stops counting once past ``stop_past``."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if not isinstance(item, (dict, list)):
            continue
        deepest = max(deepest, depth)
        if deepest > stop_past:
            break
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _too_large(what: str, limit: int, setting: str, where: dict[str, Any]) -> LimitExceeded:
    return LimitExceeded(
        f"{what}, over {limit} bytes; nothing more was read",
        code="LIMIT_EXCEEDED",
        setting=setting,
        limit=limit,
        **where,
    )
