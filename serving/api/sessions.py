"""PUT /sessions/{id}, GET /sessions/{id}, POST /sessions/{id}/confirm."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from infra.store import SessionRow, Store
from serving.deps import Admin, Caller, StoreDep
from serving.errors import BODY_ERRORS, CALLER_ERRORS, NotFound, error
from serving.schemas import (
    SESSION_ID_MAX,
    SESSION_ID_PATTERN,
    CapRequest,
    ConfirmRequest,
    DecisionInfo,
    SessionResponse,
)
from serving.security import Principal, check_owner

router = APIRouter(prefix="/sessions", tags=["sessions"], responses=CALLER_ERRORS)
SessionPath = Annotated[str, Path(max_length=SESSION_ID_MAX, pattern=SESSION_ID_PATTERN)]


def _view(store: Store, row: SessionRow, recent: int = 20) -> SessionResponse:
    """The session with its recent decisions. The decisions are read first and the session's totals after them:
    a settlement marks its decision and charges the session in one transaction, so every decision shown settled
    is in `spent_usd` (read the other way round, a settlement landing in between showed settled but unspent)."""
    decisions = store.recent_decisions(row.id, recent)
    row = store.get_session(row.id) or row
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
            for d in decisions
        ],
    )


def _owned(store: Store, session_id: str, caller: Caller) -> SessionRow:
    row = store.get_session(session_id)
    if row is None:
        raise NotFound(f"no session {session_id}")
    check_owner(caller, row.owner)
    return row


def _set_cap(store: Store, session_id: str, caller: Principal, cap_usd: float) -> SessionRow:
    """Create or re-cap the session; the owner is checked on the locked row, in the same transaction."""
    with store.lock_session(session_id, caller.key_hash) as locked:
        check_owner(caller, locked.row.owner)
        return locked.set_cap(cap_usd)


@router.put("/{session_id}", responses={**BODY_ERRORS, **error(403, "another client's session")})
def put_session(session_id: SessionPath, req: CapRequest, store: StoreDep, caller: Caller) -> SessionResponse:
    """Create a session with a spend cap, or change its cap (a frozen session stays frozen)."""
    return _view(store, _set_cap(store, session_id, caller, req.cap_usd))


@router.get("/{session_id}", responses=error(403, "another client's session") | error(404, "no such session"))
def get_session(session_id: SessionPath, store: StoreDep, caller: Caller) -> SessionResponse:
    """Spend, reservations, status and recent decisions of a session."""
    return _view(store, _owned(store, session_id, caller))


@router.post(
    "/{session_id}/confirm",
    responses={**BODY_ERRORS, **error(403, "needs an admin key"), **error(404, "no such session")},
)
def confirm_session(session_id: SessionPath, req: ConfirmRequest, store: StoreDep, _: Admin) -> SessionResponse:
    """Unfreeze a session with a new cap (admin scope)."""
    row = store.confirm(session_id, req.new_cap_usd)
    if row is None:
        raise NotFound(f"no session {session_id}")
    return _view(store, row)
