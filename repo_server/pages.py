"""Listings a page at a time: the API's ``{"items", "total", "page", "per_page"}``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from marshmallow import Schema, fields
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

T = TypeVar("T")


@dataclass
class Page(Generic[T]):
    items: list[T]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def paginate(
    session: Session, query: Select[T], page: int, per_page: int, *order_by: Any
) -> Page[T]:
    """Page ``page`` (from 1) of ``query``'s rows in ``order_by`` order, with their count."""
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(*order_by).offset((page - 1) * per_page).limit(per_page))
    return Page(list(rows), total, page, per_page)


class PageSchema(Schema):
    """A page's counts; each listing's schema adds its ``items``."""

    total = fields.Integer()
    page = fields.Integer()
    per_page = fields.Integer()
