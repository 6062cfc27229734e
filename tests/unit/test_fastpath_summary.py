"""bench.fastpath judges the HTTP ratios only when wrk measured /ping: the in-process httpx load generator bounds
/ping's own req/s and makes every ratio to it flatter /route."""

from __future__ import annotations

from bench.fastpath import summary


def _serve(load_generator: str) -> dict:
    ratios = {"route_c1_p50_over_ping_c1_p50": 2.3, "route_c1_p99_over_route_c1_p50": 1.5,
              "route_c8_rps_over_ping_c8_rps": 0.57}  # fmt: skip
    return {"load_generator": load_generator, "ratios": ratios}


def test_ratios_are_judged_only_with_wrk() -> None:
    rows = summary({"serve": {"httpx": _serve("bench/serve_load.py: asyncio + httpx"), "wrk": _serve("wrk -t1")}})
    judged = {r["target"]: r["met"] for r in rows["targets"] if r["from"] == "serve[wrk]"}
    unjudged = [r for r in rows["targets"] if r["from"] == "serve[httpx]"]
    assert judged == {"route_c1_p50_over_ping_c1_p50 <= 4.0": True, "route_c1_p99_over_route_c1_p50 <= 3.0": True,
                      "route_c8_rps_over_ping_c8_rps >= 0.35": True}  # fmt: skip
    assert len(unjudged) == 3 and all(r["met"] is None and "wrk" in r["why"] for r in unjudged)
