"""The quality guarantee a request asks for, resolved against the operating points stored with the model."""

from __future__ import annotations

import logging
from typing import TypeVar

from infra.settings import Settings
from router.guarantee import OperatingPoint
from router.routing import Router
from serving.errors import Invalid
from serving.schemas import GuaranteeRequest, RouteOptions

Options = TypeVar("Options", bound=RouteOptions)
logger = logging.getLogger(__name__)

LOC = ("body", "quality_guarantee")
_WARNED: set[str] = set()  # model versions the warning about the default guarantee was given for


def with_default_guarantee(opts: Options, settings: Settings, router: Router, version: str) -> Options:
    """The request with the service's default guarantee (TIERWISE_GUARANTEE_EPSILON) when it sets no knob itself.

    A model that cannot give the default (trained before guarantees, no stored point implies it, or the tiers
    serve other models than it was calibrated with) serves without it, with a warning in the log once per model
    version: the client did not ask, so it gets no 422.
    """
    if settings.guarantee_epsilon is None or opts.quality_guarantee is not None:
        return opts
    stored, void = router.artifact.guarantee, router.guarantee_void
    if (
        void is not None
        or stored is None
        or stored.select(settings.guarantee_epsilon, settings.guarantee_delta) is None
    ):
        if version not in _WARNED:
            _WARNED.add(version)
            why = void or "no stored operating point implies it"
            logger.warning("model %s cannot give the default quality guarantee (%s); routing without it", version, why)
        return opts
    if opts.quality_target is not None or opts.cost_weight_per_usd is not None:
        return opts
    default = GuaranteeRequest(epsilon=settings.guarantee_epsilon, delta=settings.guarantee_delta)
    return opts.model_copy(update={"quality_guarantee": default})


def guarantee_point(router: Router, opts: RouteOptions) -> OperatingPoint | None:
    """The stored point that implies the request's (ε, δ); None when it asks for none; 422 when none fits or the
    guarantee does not hold for the live tiers."""
    asked = opts.quality_guarantee
    if asked is None:
        return None
    if opts.cost_weight_per_usd is not None or opts.quality_target is not None:
        raise Invalid("quality_guarantee sets the knob itself: leave out quality_target and cost_weight_per_usd", LOC)
    stored, void = router.artifact.guarantee, router.guarantee_void
    if void is not None:
        raise Invalid(void, LOC)
    if stored is None:
        raise Invalid("the serving model has no calibrated quality guarantee; retrain it with this tierwise", LOC)
    point = stored.select(asked.epsilon, asked.delta)
    if point is None:
        raise Invalid(
            f"no calibrated guarantee implies epsilon={asked.epsilon:g}, delta={asked.delta:g}; "
            f"the model offers {stored.offered()}",
            LOC,
        )
    return point
