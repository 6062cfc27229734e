"""POST /admin/reload, GET /admin/spool, DELETE /admin/sessions/{id}."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from infra.store import first_line
from router.features import EmbedderMismatch
from router.schema import TiersConfigError
from serving.api.route import tier_infos
from serving.api.sessions import SessionPath
from serving.deps import Admin, RecorderDep, StoreDep
from serving.errors import CALLER_ERRORS, NotFound, RegistryUnavailable, ReloadFailed, error
from serving.schemas import DeletedSession, ReloadResponse, SpoolStatus

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/admin", tags=["admin"], responses=CALLER_ERRORS | error(403, "needs an admin key"))


@router.post(
    "/reload",
    responses=error(409, "the new tiers or model were refused; the old one serves")
    | error(503, "the model registry is unreachable; the old model serves"),
)
async def reload(request: Request, _: Admin) -> ReloadResponse:
    """Re-read the tiers file and re-resolve the model alias; swap without dropping requests.

    Every worker of the service switches: the one answering before it answers, the others within
    `reload_check_interval_s` (1 s by default) plus the time one model load takes, after which `/tiers` and
    `router_version` agree on every worker. A refused reload (409) changes no worker.
    """
    previous = request.app.state.runtime
    try:
        rt = await run_in_threadpool(request.app.state.manager.reload)
    except (TiersConfigError, EmbedderMismatch, FileNotFoundError, ValueError) as exc:
        raise ReloadFailed(f"reload refused, still serving the previous model: {exc}") from None
    except ConnectionError as exc:  # model_source.check_reachable
        raise RegistryUnavailable(f"reload failed, still serving the previous model: {exc}") from None
    except Exception as exc:  # the registry's own refusals (an alias or version gone, a model that will not load)
        logger.exception("reload failed; the previous model serves")
        raise ReloadFailed(
            f"reload refused, still serving the previous model: {type(exc).__name__}: {first_line(exc)}"
        ) from None
    return ReloadResponse(
        router_version=rt.version,
        previous_version=previous.version if previous else None,
        tiers=tier_infos(rt),
    )


@router.get("/spool")
def spool_status(_: Admin, recorder: RecorderDep) -> SpoolStatus:
    """Outcomes waiting in the local spool for the store, and the ones the store refused (without prompt text)."""
    return recorder.status()


@router.delete("/sessions/{session_id}", responses=error(404, "nothing is stored for this session"))
def delete_session(session_id: SessionPath, _: Admin, store: StoreDep, recorder: RecorderDep) -> DeletedSession:
    """Delete a session with every decision and outcome recorded in it (prompt text included), for good: from the
    store, and from this machine's outcome spool (outcomes and settlements waiting out a store outage, and the ones
    the store refused), which would otherwise write them back or keep their text. No spool replay runs meanwhile:
    one mid-batch wrote a spooled outcome of the session back between the store's delete and the spool's."""
    with recorder.spool.quiet() as remove:
        n_sessions, decision_ids, n_outcomes = store.delete_session(session_id)
        ids = set(decision_ids)
        spooled = remove(lambda r: r.get("session_id") == session_id or r.get("decision_id") in ids)
    if not (n_sessions or decision_ids or n_outcomes or spooled):
        raise NotFound(f"nothing is stored for session {session_id}")
    return DeletedSession(
        session_id=session_id, sessions=n_sessions, decisions=len(decision_ids), outcomes=n_outcomes, spooled=spooled
    )
