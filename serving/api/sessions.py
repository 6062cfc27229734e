"""PUT /sessions/{id}, GET /sessions/{id}, POST /sessions/{id}/confirm."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from serving.deps import Admin, Caller, StoreDep
from serving.errors import NotFound
from serving.schemas import CapRequest, ConfirmRequest, DecisionInfo, SessionResponse
from serving.security import check_owner
from serving.store import SessionRow, Store

router = APIRouter(prefix="/sessions", tags=["sessions"])
SessionPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:\-]{1,128}$")]


def _view(store: Store, row: SessionRow, recent: int = 20) -> SessionResponse:
    return SessionResponse(
        session_id=row.id,
        cap_usd=row.cap_usd,
        spent_usd=row.spent_usd,
        reserved_usd=row.reserved_usd,
        status=row.status,
        recent_decisions=[
            DecisionInfo(
                decision_id=d.id,
                created_at=d.created_at,
                tier=d.tier,
                model=d.model,
                expected_cost_usd=d.expected_cost_usd,
                reserved_usd=d.reserved_usd,
                settled=d.settled,
                reason=d.reason,
            )
            for d in store.recent_decisions(row.id, recent)
        ],
    )


def _owned(store: Store, session_id: str, caller: Caller) -> SessionRow:
    row = store.get_session(session_id)
    if row is None:
        raise NotFound(f"no session {session_id}")
    check_owner(caller, row.owner)
    return row


@router.put("/{session_id}", responses={403: {"description": "another client's session"}})
def put_session(session_id: SessionPath, req: CapRequest, store: StoreDep, caller: Caller) -> SessionResponse:
    """Create a session with a spend cap, or change its cap (a frozen session stays frozen)."""
    existing = store.get_session(session_id)
    if existing is not None:
        check_owner(caller, existing.owner)
    return _view(store, store.set_cap(session_id, caller.key_hash, req.cap_usd))


@router.get("/{session_id}", responses={403: {"description": "another client's session"}, 404: {}})
def get_session(session_id: SessionPath, store: StoreDep, caller: Caller) -> SessionResponse:
    """Spend, reservations, status and recent decisions of a session."""
    return _view(store, _owned(store, session_id, caller))


@router.post("/{session_id}/confirm", responses={403: {"description": "needs admin"}, 404: {}})
def confirm_session(session_id: SessionPath, req: ConfirmRequest, store: StoreDep, _: Admin) -> SessionResponse:
    """Unfreeze a session with a new cap (admin scope)."""
    row = store.confirm(session_id, req.new_cap_usd)
    if row is None:
        raise NotFound(f"no session {session_id}")
    return _view(store, row)
