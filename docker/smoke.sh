#!/usr/bin/env bash
# Build the service image and check that a container of it serves a model: `make container-smoke MODEL_DIR=...`.
#
#   MODEL_DIR   a tierwise model directory (tierwise train's registered model, downloaded with
#               `mlflow artifacts download --artifact-uri models:/tierwise-router@champion --dst-path DIR`,
#               or the --out of `tierwise add-model`); mounted read-only as TIERWISE_LOCAL_MODEL_PATH
#   IMAGE       the tag to build (default tierwise:smoke)
#   BUILD_ARGS  extra `docker build` arguments, e.g. a PYTHON_IMAGE mirror where Docker Hub is out of reach
#   NETWORK     "bridge" (default: the port published on 127.0.0.1) or "host" (engines without a bridge)
#   PORT        the host port (default 8765)
#   UP_PORT     the port of the stand-in upstream (default 9000): docker/fake_upstream.py, run from the same image
#               in the service container's network namespace; the service is given the model's own tiers with
#               every model's upstream there (docker/standin_tiers.py)
#
# Checks: the image has no torch and runs as uid 10001; /readyz turns ready; /route answers 200 with a tier for a
# client key and 401 without one; the OpenAI-compatible door lists its models and answers a chat completion, plain
# and streamed, with the stand-in upstream's text; the container's health check turns healthy. Exits non-zero naming
# the first check that failed; the containers are removed either way.
set -euo pipefail

MODEL_DIR=${MODEL_DIR:?set MODEL_DIR to a tierwise model directory}
IMAGE=${IMAGE:-tierwise:smoke}
NETWORK=${NETWORK:-bridge}
PORT=${PORT:-8765}
UP_PORT=${UP_PORT:-9000}
HERE=$(cd "$(dirname "$0")" && pwd)
NAME=tierwise-smoke-$$
KEY=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
SHA=$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)

fail() {
  echo "container smoke: FAILED: $*" >&2
  for c in "$NAME" "$NAME-up"; do docker logs "$c" 2>&1 | tail -20 >&2 || true; done
  exit 1
}
work=$(mktemp -d)
trap 'docker rm -f "$NAME" "$NAME-up" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
# The tiers the model was trained with, every model's upstream the stand-in.
python3 "$HERE/standin_tiers.py" "$MODEL_DIR" "http://127.0.0.1:$UP_PORT/v1" >"$work/tiers.toml"
chmod a+r "$work/tiers.toml"

# shellcheck disable=SC2086  # BUILD_ARGS is a list of arguments
docker build ${BUILD_ARGS:-} -t "$IMAGE" "$(dirname "$0")/.."

[ "$(docker run --rm "$IMAGE" id -u)" = 10001 ] || fail "the image does not run as uid 10001"
docker run --rm "$IMAGE" python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
  || fail "torch is in the runtime image"

if [ "$NETWORK" = host ]; then
  net=(--network host -e "TIERWISE_PORT=$PORT")
else
  net=(-p "127.0.0.1:$PORT:8000")
fi
docker run -d --name "$NAME" "${net[@]}" \
  -e "TIERWISE_API_KEYS={\"$SHA\":\"client\"}" \
  -e TIERWISE_LOCAL_MODEL_PATH=/models/router \
  -e TIERWISE_TIERS_PATH=/config/tiers.toml \
  -e NO_PROXY=127.0.0.1,localhost -e no_proxy=127.0.0.1,localhost \
  -v "$(cd "$MODEL_DIR" && pwd):/models/router:ro" \
  -v "$work/tiers.toml:/config/tiers.toml:ro" \
  "$IMAGE" >/dev/null
docker run -d --name "$NAME-up" --network "container:$NAME" -v "$HERE/fake_upstream.py:/fake_upstream.py:ro" \
  "$IMAGE" python /fake_upstream.py "$UP_PORT" >/dev/null

url=http://127.0.0.1:$PORT
for _ in $(seq 60); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/readyz" || true)" = 200 ] && break
  sleep 1
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "$url/readyz")" = 200 ] || fail "/readyz never turned ready"

body='{"prompt": "Write a Python function that checks whether a number is prime."}'
answer=$(curl -s -w '\n%{http_code}' -H "Authorization: Bearer $KEY" -H 'content-type: application/json' \
  -XPOST "$url/route" -d "$body") || fail "/route did not answer"
[ "$(tail -n1 <<<"$answer")" = 200 ] || fail "/route answered $(tail -n1 <<<"$answer")"
head -n -1 <<<"$answer" | python3 -c "import json, sys; assert json.load(sys.stdin)['tier']" \
  || fail "/route's answer names no tier"
[ "$(curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' -XPOST "$url/route" -d "$body")" = 401 ] \
  || fail "/route without a key was not refused with 401"

auth=(-H "Authorization: Bearer $KEY" -H 'content-type: application/json')
for _ in $(seq 30); do
  docker exec "$NAME" python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$UP_PORT/health', timeout=2)" \
    >/dev/null 2>&1 && break
  sleep 1
done
models=$(curl -s "${auth[@]}" "$url/v1/models") || fail "/v1/models did not answer"
python3 -c "import json, sys; assert 'tierwise' in {m['id'] for m in json.load(sys.stdin)['data']}" <<<"$models" \
  || fail "/v1/models did not list tierwise: $models"
chat='{"model": "tierwise", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}'
answer=$(curl -s -w '\n%{http_code}' "${auth[@]}" -XPOST "$url/v1/chat/completions" -d "$chat") \
  || fail "/v1/chat/completions did not answer"
[ "$(tail -n1 <<<"$answer")" = 200 ] || fail "/v1/chat/completions answered $(tail -n1 <<<"$answer"): $answer"
head -n -1 <<<"$answer" | python3 -c "import json, sys; assert json.load(sys.stdin)['choices'][0]['message']['content'] == 'smoke answer'" \
  || fail "/v1/chat/completions did not relay the upstream's answer: $answer"
stream='{"model": "tierwise", "stream": true, "messages": [{"role": "user", "content": "What is 2 + 2?"}]}'
streamed=$(curl -s -N "${auth[@]}" -XPOST "$url/v1/chat/completions" -d "$stream") \
  || fail "the streamed chat completion did not answer"
if ! grep -q 'smoke answer' <<<"$streamed" || ! grep -q '^data: \[DONE\]' <<<"$streamed"; then
  fail "the streamed chat completion did not relay the upstream's answer: $streamed"
fi

for _ in $(seq 90); do
  health=$(docker inspect --format '{{.State.Health.Status}}' "$NAME")
  [ "$health" = healthy ] && break
  sleep 1
done
[ "$health" = healthy ] || fail "the health check is '$health', not healthy"

echo "container smoke: passed ($IMAGE: uid 10001, no torch, ready, /route 200 with a key and 401 without," \
  "/v1/models and a chat completion (plain and streamed) through a stand-in upstream, healthy)"
