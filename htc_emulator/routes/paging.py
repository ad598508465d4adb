"""Pages of a list, as the spec's paged answers: ``{items, next}``."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from ..validation import page_offset, query_integer

MAX_PAGE_SIZE = 10000


def page(request: Request, items: list, page_index: str | None, page_size: str, render: Callable | None = None) -> dict:
    """One page ``{items, next}``; ``next`` (absolute, same host) only when more remain."""
    page_size = query_integer("pageSize", page_size, 1, MAX_PAGE_SIZE)
    offset = page_offset(page_index)
    chunk = items[offset : offset + page_size]
    following = str(offset + page_size) if offset + page_size < len(items) else None
    return body(request, [render(item) for item in chunk] if render else chunk, following)


def body(request: Request, items: list, following: str | None) -> dict:
    """``{items, next}``: ``next`` is this request's URL with ``pageIndex`` ``following``; none on the last page."""
    answer = {"items": items}
    if following is not None:
        answer["next"] = str(request.url.include_query_params(pageIndex=following))
    return answer
