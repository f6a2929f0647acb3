#!/usr/bin/env bash
# docker/smoke-test.sh: the container, for real, on a running Docker engine (DOCKER_HOST as set).
#
#   1. validates every compose combination (`docker compose config`), GPU ones included
#   2. builds the image (CPU torch) and starts the single service (docker/compose.cpu.yml) with --wait
#   3. checks that it runs as non-root, hardened (read-only root file system, no-new-privileges, no
#      capabilities; a write to / fails, /tmp works), then /health, /caption, /vqa and /embed with scenes rendered by
#      the image's own model.scenes; captions and answers must equal the scenes' truth
#   4. stops it with SIGTERM: exit code 0, a graceful shutdown in the log, within stop_grace_period;
#      then, with fault injection on (docker/compose.faults.yml), breaks the device and kills the inference
#      thread: each time the process exits (5, 6), compose restarts it (RestartCount goes up) and /health
#      comes back; and a model that cannot load exits (4) and restarts, never sitting unhealthy
#   5. adds Prometheus (docker/compose.monitoring.yml, built from Debian's package): its target list must
#      show mmserve up, and every query of the Grafana dashboard must run (Grafana itself is not started:
#      its image comes only from a registry)
#   6. starts two CPU replicas behind nginx: requests reach both (X-Upstream and each one's /metrics);
#      a replica is stopped under a steady stream of requests, and not one request may fail
# Everything it started is removed on exit (`down -v`), whatever happens; the image stays as a cache.
#
# Environment:
#   SMOKE_CHECK_ANSWERS  1: captions/answers must be right; 0: only statuses and shapes are checked.
#                        Default: 1 when model/weights/ holds the trained model, else 0 (a tiny random
#                        checkpoint is then served from a mounted folder, through MMSERVE_MODEL=/models/tiny)
#   TORCH_INDEX_URL      where the build gets torch; default empty: the build's own pip sources (the
#                        container-engine stand-in carries the CPU wheel). Elsewhere, for a CPU-only
#                        image: https://download.pytorch.org/whl/cpu
#   SMOKE_PYTHON         the host's python3 (standard library only) for the HTTP client
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
PY=${SMOKE_PYTHON:-python3}
work=$(mktemp -d)
chmod 755 "$work"  # the tiny checkpoint lies under it, mounted read-only into the container

step() { printf '\n== %s (at %d s)\n' "$*" $((SECONDS - started)); }
fail() { echo "FAILED: $*" >&2; exit 1; }

export TORCH_INDEX_URL=${TORCH_INDEX_URL-}
export MMSERVE_IMAGE_TAG=smoke
MMSERVE_PUBLISH_PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export MMSERVE_PUBLISH_PORT
export MMSERVE_MODELS_DIR=$work/models
# Generous limits: CI machines share their CPUs, and a starved CPU must not read as a broken container.
export MMSERVE_REQUEST_TIMEOUT_S=${MMSERVE_REQUEST_TIMEOUT_S:-120}
# The drain: MMSERVE_DRAIN_GRACE_S (5 s) with the listener open, then up to the request timeout + 5 s.
export MMSERVE_STOP_GRACE_PERIOD=$((MMSERVE_REQUEST_TIMEOUT_S + 20))s
export MMSERVE_START_PERIOD=${MMSERVE_START_PERIOD:-600s}
mkdir -p "$MMSERVE_MODELS_DIR"
url=http://127.0.0.1:$MMSERVE_PUBLISH_PORT

if [[ -f model/weights/config.json ]]; then
  export MMSERVE_MODEL=builtin
  : "${SMOKE_CHECK_ANSWERS:=1}"
else
  export MMSERVE_MODEL=/models/tiny
  : "${SMOKE_CHECK_ANSWERS:=0}"
fi

gpu=(docker compose -p mmserve-smoke -f docker-compose.yml)
single=(docker compose -p mmserve-smoke -f docker-compose.yml -f docker/compose.cpu.yml)
replicas=(docker compose -p mmserve-smoke-replicas -f docker-compose.yml -f docker/compose.replicas.yml
          -f docker/compose.replicas.cpu.yml)
monitoring=(docker compose -p mmserve-smoke -f docker-compose.yml -f docker/compose.cpu.yml -f docker/compose.monitoring.yml)
faults=(docker compose -p mmserve-smoke -f docker-compose.yml -f docker/compose.cpu.yml -f docker/compose.faults.yml)
PROMETHEUS_PUBLISH_PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export PROMETHEUS_PUBLISH_PORT
gpu_replicas=(docker compose -p mmserve-smoke-replicas -f docker-compose.yml -f docker/compose.replicas.yml)

cleanup() {
  local rc=$?
  trap - EXIT
  if ((rc != 0)); then
    echo "-- last log lines" >&2
    "${single[@]}" logs --no-color --tail 40 2>/dev/null >&2 || true
    "${replicas[@]}" logs --no-color --tail 40 2>/dev/null >&2 || true
  fi
  "${single[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  "${monitoring[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  "${faults[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  "${replicas[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$work"
  if ((rc == 0)); then
    echo "docker smoke test: passed in $((SECONDS - started)) s"
  else
    echo "docker smoke test: FAILED (exit $rc) after $((SECONDS - started)) s" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

exit_code() { docker inspect -f '{{.State.ExitCode}}' "$1"; }
restarts() { docker inspect -f '{{.RestartCount}}' "$1"; }

# Stops a container with SIGTERM (docker stop: SIGKILL only after the grace period) and checks that it
# drained: exit code 0 and the service's and uvicorn's shutdown lines in its log.
stop_gracefully() {
  local id=$1 name=$2 t0=$SECONDS code log
  docker stop -t "${MMSERVE_STOP_GRACE_PERIOD%s}" "$id" >/dev/null
  code=$(exit_code "$id")
  log=$(docker logs "$id" 2>&1)
  echo "  $name: SIGTERM → exited $code after $((SECONDS - t0)) s"
  [[ $code == 0 ]] || fail "$name exited with $code, not 0 (137: killed after the grace period)"
  grep -q "draining: finishing accepted requests" <<<"$log" || fail "$name: no 'draining' line in the log"
  grep -q "Finished server process" <<<"$log" || fail "$name: uvicorn did not finish cleanly"
  grep -E "Shutting down|draining|stopped|Finished server process" <<<"$log" | sed 's/^/    /'
}

step "docker compose config: every combination"
"${gpu[@]}" config -q
"${single[@]}" config -q
"${gpu_replicas[@]}" config -q
"${replicas[@]}" config -q
# The GPU files reserve nvidia devices (which this engine cannot give); the CPU overrides reset them.
"${gpu[@]}" config | grep -q 'driver: nvidia' || fail "docker-compose.yml reserves no GPU"
[[ $("${gpu_replicas[@]}" config | grep -c 'driver: nvidia') == 2 ]] || fail "the replicas do not reserve a GPU each"
! "${single[@]}" config | grep -q nvidia || fail "docker/compose.cpu.yml leaves a GPU reservation"
! "${replicas[@]}" config | grep -q nvidia || fail "docker/compose.replicas.cpu.yml leaves a GPU reservation"
echo "  4 files, 4 combinations: valid; GPU reservations where expected, none in the CPU ones"

step "build the image (CPU torch${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL})"
t0=$SECONDS
"${single[@]}" build --quiet api
echo "  mmserve:smoke built in $((SECONDS - t0)) s, $(docker image inspect -f '{{.Size}}' mmserve:smoke | awk '{printf "%.0f MB", $1 / 1e6}')"

[[ $(docker image inspect -f '{{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.Cmd}} {{json .Config.ExposedPorts}}' mmserve:smoke) \
   == '10001:10001 ["mmserve"] ["serve"] {"8000/tcp":{}}' ]] || fail "image config: user, entrypoint or port"
docker image inspect -f '{{json .Config.Healthcheck.Test}}' mmserve:smoke | grep -q /health || fail "image has no HEALTHCHECK"
echo "  image: user 10001, exec-form entrypoint 'mmserve serve', port 8000, HEALTHCHECK on /health"

# No GPU here, but the engine can still be shown the request: create (never start) the GPU containers
# and read the device requests the engine got.
"${gpu[@]}" create --no-build --quiet-pull api >/dev/null 2>&1
requests=$(docker inspect -f '{{json .HostConfig.DeviceRequests}}' "$("${gpu[@]}" ps -aq api)")
echo "  GPU compose file → device request $requests"
grep -q '"Driver":"nvidia","Count":1,' <<<"$requests" || fail "docker-compose.yml asks for no GPU"
"${gpu[@]}" down -v >/dev/null 2>&1
"${gpu_replicas[@]}" create --no-build --quiet-pull >/dev/null 2>&1
for replica in 1 2; do
  requests=$(docker inspect -f '{{json .HostConfig.DeviceRequests}}' "$("${gpu_replicas[@]}" ps -aq "api-$replica")")
  echo "  GPU replica api-$replica → device request $requests"
  grep -q "\"DeviceIDs\":\[\"$((replica - 1))\"\]" <<<"$requests" || fail "api-$replica is not pinned to GPU $((replica - 1))"
done
"${gpu_replicas[@]}" down -v >/dev/null 2>&1

if [[ $MMSERVE_MODEL == /models/tiny ]]; then
  echo "  no trained weights in model/weights/: serving a tiny random checkpoint from $MMSERVE_MODELS_DIR/tiny"
  # the builder is a test helper, not in the image: the checkout's tests/ is mounted for it, read-only
  docker run --rm --user "$(id -u):$(id -g)" -v "$MMSERVE_MODELS_DIR:/out" -v "$PWD/tests:/checkout/tests:ro" \
    --workdir /checkout --entrypoint python mmserve:smoke \
    -c 'from pathlib import Path; from tests.support.builtin_checkpoint import tiny_checkpoint; tiny_checkpoint(Path("/out/tiny"))'
  chmod -R a+rX "$MMSERVE_MODELS_DIR"  # safetensors writes 0600; the service runs as uid 10001
fi

step "single service on the CPU: up --wait (MMSERVE_MODEL=$MMSERVE_MODEL)"
t0=$SECONDS
"${single[@]}" up -d --no-build --wait --wait-timeout 900
echo "  healthy after $((SECONDS - t0)) s on $url"
api=$("${single[@]}" ps -aq api)

uid=$("${single[@]}" exec -T api id -u)
[[ $uid != 0 ]] || fail "the container runs as root"
echo "  runs as uid $uid (not root)"
hardening=$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}} {{json .HostConfig.SecurityOpt}} {{json .HostConfig.CapDrop}}' "$api")
[[ $hardening == 'true ["no-new-privileges:true"] ["ALL"]' ]] || fail "not hardened: $hardening"
status=$("${single[@]}" exec -T api sh -c 'grep -E "^(CapEff|NoNewPrivs)" /proc/1/status | tr -s "\t\n" "  "')
[[ $status == "CapEff: 0000000000000000 NoNewPrivs: 1 " ]] || fail "PID 1 keeps privileges: $status"
! "${single[@]}" exec -T api sh -c 'echo x > /mmserve-write-test' 2>/dev/null || fail "the root file system is writable"
"${single[@]}" exec -T api sh -c 'echo x > /tmp/mmserve-write-test && echo x > "$HOME/.cache/write-test"' \
  || fail "/tmp or the cache folder is not writable"
echo "  hardened: read-only root (a write to / fails; /tmp and ~/.cache are tmpfs), no-new-privileges, no capabilities"
caches=$(docker run --rm --user 0 --entrypoint sh mmserve:smoke -c \
  'find / -xdev -path /proc -prune -o -type d -path "*/.cache/pip" -print -o -type d -name build -path "/src/*" -print')
[[ -z $caches ]] || fail "pip caches or build trees in the image: $caches"
echo "  no pip cache or build tree in the image"

"${single[@]}" exec -T api python - 4 "$MMSERVE_MODEL" <docker/smoke_scenes.py >"$work/scenes.json"
strict=()
[[ $SMOKE_CHECK_ANSWERS == 1 ]] && strict=(--strict)
"$PY" docker/smoke_client.py check "$url" "$work/scenes.json" "${strict[@]}"

step "Prometheus scrapes mmserve (docker/compose.monitoring.yml)"
t0=$SECONDS
"${monitoring[@]}" config -q
"${monitoring[@]}" build --quiet prometheus
"${monitoring[@]}" up -d --no-deps --wait --wait-timeout 300 prometheus  # the api runs already
echo "  Prometheus built and started in $((SECONDS - t0)) s on 127.0.0.1:$PROMETHEUS_PUBLISH_PORT"
"$PY" - "http://127.0.0.1:$PROMETHEUS_PUBLISH_PORT" docker/grafana/dashboards/mmserve.json <<'PYEOF' || fail "Prometheus does not scrape mmserve"
import json, sys, time, urllib.parse, urllib.request
prometheus, dashboard = sys.argv[1], sys.argv[2]
def get(path):
    return json.load(urllib.request.urlopen(prometheus + path, timeout=10))
deadline = time.monotonic() + 120
while True:
    try:
        targets = get("/api/v1/targets")["data"]["activeTargets"]
    except OSError:
        targets = []
    mmserve = [t for t in targets if t["labels"].get("job") == "mmserve"]
    if mmserve and all(t["health"] == "up" for t in mmserve):
        break
    if time.monotonic() > deadline:
        sys.exit(f"targets: {json.dumps(targets)}")
    time.sleep(2)
print(f"  target {mmserve[0]['scrapeUrl']}: up")
for panel in json.load(open(dashboard))["panels"]:
    for target in panel["targets"]:
        expr = target["expr"].replace("$__rate_interval", "1m")
        answer = get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert answer["status"] == "success", (panel["title"], expr, answer)
    print(f"  dashboard panel {panel['title']!r}: its queries run")
up = get("/api/v1/query?" + urllib.parse.urlencode({"query": 'up{job="mmserve"}'}))["data"]["result"]
assert [r["value"][1] for r in up] == ["1"], up
PYEOF
"${monitoring[@]}" stop prometheus >/dev/null 2>&1
"${monitoring[@]}" rm -f prometheus >/dev/null 2>&1

step "single service: SIGTERM"
stop_gracefully "$api" api
"${single[@]}" down -v --remove-orphans >/dev/null 2>&1

step "fatal means exit: a broken device, a dead inference thread (MMSERVE_FAULT_INJECTION, compose.faults.yml)"
"${faults[@]}" up -d --no-build --wait --wait-timeout 900
api=$("${faults[@]}" ps -aq api)
for fault in device inference-thread; do
  before=$(restarts "$api") t0=$SECONDS
  "$PY" docker/smoke_client.py fault "$url" "$fault" || fail "the $fault fault was not taken"
  until (($(restarts "$api") > before)); do
    ((SECONDS - t0 < 120)) || fail "$fault: no restart within 120 s ($(docker inspect -f '{{.State.Status}}' "$api"))"
    sleep 1
  done
  "$PY" docker/smoke_client.py healthy "$url" --seconds 900 || fail "$fault: /health did not come back"
  echo "  $fault: the process exited, compose restarted it (RestartCount $before → $(restarts "$api")), /health 200 after $((SECONDS - t0)) s"
done
log=$(docker logs "$api" 2>&1)
for status in 5 6; do
  grep -q "(exiting with status $status)" <<<"$log" || fail "no exit with status $status in the log"
done
grep -E "\(exiting with status [56]\)" <<<"$log" | sed 's/^/    /'
"${faults[@]}" down -v --remove-orphans >/dev/null 2>&1

step "fatal means exit: a model that cannot load (MMSERVE_MODEL=/models/nonexistent)"
MMSERVE_MODEL=/models/nonexistent "${single[@]}" up -d --no-build
api=$("${single[@]}" ps -aq api)
t0=$SECONDS
until (($(restarts "$api") >= 2)); do
  ((SECONDS - t0 < 300)) || fail "a bad model: $(restarts "$api") restarts in 300 s ($(docker inspect -f '{{.State.Status}}' "$api"))"
  sleep 1
done
# Docker shows a container waiting out its restart back-off as "restarting" and "unhealthy" (its health is
# reset to "starting" when it runs again): only running and unhealthy would be the old defect.
read -r state health < <(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$api")
[[ "$state $health" != "running unhealthy" ]] || fail "a bad model left the container running but unhealthy"
log=$(docker logs "$api" 2>&1)
grep -q "loading the model failed: cannot load model '/models/nonexistent'" <<<"$log" || fail "no reason in the log"
grep -q "(exiting with status 4)" <<<"$log" || fail "no exit with status 4 in the log"
echo "  exited with status 4 and restarted $(restarts "$api") times in $((SECONDS - t0)) s (now $state, health ${health:-none}); the reason:"
grep -m1 "loading the model failed" <<<"$log" | cut -c1-200 | sed 's/^/    /'
"${single[@]}" down -v --remove-orphans >/dev/null 2>&1

step "two CPU replicas behind nginx: up --wait"
t0=$SECONDS
"${replicas[@]}" up -d --no-build --wait --wait-timeout 900
echo "  healthy after $((SECONDS - t0)) s on $url"
"$PY" docker/smoke_client.py spread "$url" "$work/scenes.json" --requests 12
for replica in api-1 api-2; do
  served=$("${replicas[@]}" exec -T "$replica" python -c '
import urllib.request
text = urllib.request.urlopen("http://127.0.0.1:8000/metrics", timeout=5).read().decode()
print(int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("mmserve_requests_total{") and "caption" in line)))')
  echo "  $replica /metrics: $served caption requests"
  ((served > 0)) || fail "$replica served no request"
done

step "stop a replica under load: no request may fail"
api2=$("${replicas[@]}" ps -aq api-2)
"$PY" docker/smoke_client.py load "$url" "$work/scenes.json" --seconds 25 --concurrency 4 &
load_pid=$!
sleep 8
stop_gracefully "$api2" api-2
wait "$load_pid" || fail "requests failed while a replica stopped"

step "done"
