#!/usr/bin/env bash
# Bring up compose.yaml (tierwise + PostgreSQL + an MLflow tracking server), train from the host against its MLflow
# server, and check the whole loop: `make compose-smoke`.
#
#   PROJECT        the compose project (default tierwise-smoke); its containers and volumes are removed at the end
#   COMPOSE_FILES  extra compose files after compose.yaml, e.g. an override that names mirrors of the base images
#   UP_ARGS        arguments of `up` (default --build; --no-build to run images built beforehand)
#   OUTCOMES       the log to train on (default data/routerbench_subset/outcomes.parquet)
#   TIERWISE       the host's CLI (default .venv/bin/tierwise)
#   KEEP=1         leave the stack running
#
# Checks: every service turns healthy; the service is unready (503) while the registry holds no champion;
# `tierwise train` with MLFLOW_TRACKING_URI=http://127.0.0.1:5000 registers a champion (artifacts uploaded through
# the server); the service loads it on its own (/readyz 200) and names its version; /route answers 200 for the client
# key and 401 without one; an outcome posted for that decision lands in the compose PostgreSQL; /admin/reload
# answers the admin key and refuses a client's (403); after a restart
# of the service container the model is loaded again from the tracking server. Exits non-zero naming the first
# check that failed.
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=${PROJECT:-tierwise-smoke}
OUTCOMES=${OUTCOMES:-data/routerbench_subset/outcomes.parquet}
TIERWISE=${TIERWISE:-.venv/bin/tierwise}
files=(-f compose.yaml)
for f in ${COMPOSE_FILES:-}; do files+=(-f "$f"); done
compose() { docker compose -p "$PROJECT" "${files[@]}" "$@"; }

key() { python3 -c 'import secrets; print(secrets.token_hex(16))'; }
sha() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
CLIENT=$(key)
ADMIN=$(key)
TIERWISE_API_KEYS=$(python3 -c 'import json, sys; print(json.dumps({sys.argv[1]: "client", sys.argv[2]: "admin"}))' \
  "$(sha "$CLIENT")" "$(sha "$ADMIN")")
TIERWISE_RELOAD_INTERVAL_S=5
export TIERWISE_API_KEYS TIERWISE_RELOAD_INTERVAL_S
url=http://127.0.0.1:8000
work=$(mktemp -d)

fail() {
  echo "compose smoke: FAILED: $*" >&2
  compose ps >&2 || true
  compose logs --tail 20 tierwise >&2 || true
  exit 1
}
cleanup() {
  rm -rf "$work"
  [ "${KEEP:-0}" = 1 ] || compose down -v --remove-orphans >/dev/null 2>&1 || true
}
trap cleanup EXIT
status() { curl -s -o /dev/null -w '%{http_code}' "$@" || true; }
# Ready means every worker: /readyz 200 on 10 requests in a row, each on a new connection (any of the workers).
wait_ready() {
  local in_a_row=0
  for _ in $(seq $(($1 * 5))); do
    if [ "$(status "$url/readyz")" = 200 ]; then in_a_row=$((in_a_row + 1)); else in_a_row=0; fi
    [ "$in_a_row" -ge 10 ] && return 0
    sleep 0.2
  done
  return 1
}

[ -f "$OUTCOMES" ] || fail "$OUTCOMES is missing (make data)"
[ -x "$TIERWISE" ] || fail "$TIERWISE is missing (make .venv/.stamp-dev)"

# shellcheck disable=SC2086  # UP_ARGS is a list of arguments
compose up -d --wait --wait-timeout 300 ${UP_ARGS:---build} || fail "the stack did not turn healthy"
[ "$(status "$url/readyz")" = 503 ] || fail "/readyz is not 503 before any champion exists"

# Train from the host: the tracking server records the run and stores the model's artifacts in its volume.
TIERWISE_STORE_DIR="$work/store" MLFLOW_TRACKING_URI=http://127.0.0.1:5000 \
  "$TIERWISE" train --outcomes "$OUTCOMES" >"$work/train.log" 2>&1 || { tail -20 "$work/train.log" >&2; fail "tierwise train"; }
grep -q "champion" "$work/train.log" || fail "the training registered no champion"

wait_ready 90 || fail "the service never loaded the champion (/readyz not 200)"
version=$(curl -s "$url/readyz" | python3 -c 'import json, sys; print(json.load(sys.stdin).get("router_version") or "")')
[ -n "$version" ] || fail "/readyz names no model version"

body='{"prompt": "Write a Python function that checks whether a number is prime.", "session_id": "compose-smoke"}'
answer=$(curl -s -w '\n%{http_code}' -H "Authorization: Bearer $CLIENT" -H 'content-type: application/json' \
  -XPOST "$url/route" -d "$body")
[ "$(tail -n1 <<<"$answer")" = 200 ] || fail "/route answered $(tail -n1 <<<"$answer")"
decision=$(head -n -1 <<<"$answer" | python3 -c 'import json, sys; d = json.load(sys.stdin); assert d["tier"]; print(d["decision_id"])') \
  || fail "/route's answer names no tier or decision"
[ "$(status -H 'content-type: application/json' -XPOST "$url/route" -d "$body")" = 401 ] \
  || fail "/route without a key was not refused with 401"

outcome="{\"decision_id\": \"$decision\", \"score\": 1.0, \"cost_usd\": 0.0004}"
[ "$(status -H "Authorization: Bearer $CLIENT" -H 'content-type: application/json' -XPOST "$url/outcomes" -d "$outcome")" = 201 ] \
  || fail "/outcomes did not answer 201"
rows=$(compose exec -T db psql -U tierwise -d tierwise -tAc "select count(*) from outcomes where decision_id = '$decision'")
[ "$rows" = 1 ] || fail "the outcome is not in the compose PostgreSQL ($rows rows)"

[ "$(status -H "Authorization: Bearer $ADMIN" -XPOST "$url/admin/reload")" = 200 ] \
  || fail "POST /admin/reload with the admin key did not answer 200"
[ "$(status -H "Authorization: Bearer $CLIENT" -XPOST "$url/admin/reload")" = 403 ] \
  || fail "POST /admin/reload with a client key was not refused with 403"

compose restart tierwise >/dev/null
sleep 2
wait_ready 90 || fail "after a restart the service did not load the champion again"

echo "compose smoke: passed (healthy stack; unready without a champion; trained from the host against" \
  "the tracking server; served model $version; /route 200 with a key and 401 without; the outcome in PostgreSQL;" \
  "admin reload 200, 403 for a client; ready again after a restart)"
