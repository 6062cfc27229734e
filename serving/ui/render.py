"""The admin page's Jinja2 templates (autoescaped) and the filters they format numbers with."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi.templating import Jinja2Templates

UI_DIR = Path(__file__).resolve().parent


def usd(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "$0"
    return f"${value:,.2f}" if abs(value) >= 1 else f"${value:.6f}"


def plain(value: float) -> str:
    """A number as a form field's value: no exponent, no trailing zeros."""
    return f"{value:.6f}".rstrip("0").rstrip(".") or "0"


def pct(share: float) -> str:
    return f"{share * 100:.1f}%"


@lru_cache
def templates() -> Jinja2Templates:
    t = Jinja2Templates(directory=UI_DIR / "templates")  # autoescapes .html
    t.env.filters.update(usd=usd, pct=pct, plain=plain)
    return t
