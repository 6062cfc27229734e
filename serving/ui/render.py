"""The admin page's Jinja2 templates (autoescaped) and the filters they format numbers with."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi.templating import Jinja2Templates

from serving.schemas import MAX_CAP_USD

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


def next_cap(cap: float | None) -> float:
    """The cap a confirm form offers for a frozen session: twice its cap (1 USD with none), within the bound a cap
    may have (MAX_CAP_USD), so the offered value is one the form accepts."""
    return min(cap * 2, MAX_CAP_USD) if cap else 1.0


def pct(share: float) -> str:
    return f"{share * 100:.1f}%"


@lru_cache
def templates() -> Jinja2Templates:
    t = Jinja2Templates(directory=UI_DIR / "templates")  # autoescapes .html
    t.env.filters.update(usd=usd, pct=pct, plain=plain, next_cap=next_cap)
    return t
