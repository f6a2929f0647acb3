#!/usr/bin/env bash
# docker/ci-smoke.sh: the Docker smoke test in CI, when this machine can run a Docker engine.
#
# .ci/run calls it after the tests:   docker/ci-smoke.sh
# It runs docker/smoke-test.sh when it can start an engine (as root, with ../shared/tools/container-engine.sh
# beside the checkout), and otherwise prints "docker smoke test: skipped (reason)" and succeeds. An engine
# that should start but does not is a failure, not a skip. SMOKE_SKIP=1 skips on purpose;
# SMOKE_TIMEOUT_S (default 1200) bounds the whole test, so that CI stays under its 30 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

engine=../shared/tools/container-engine.sh
skip() { echo "docker smoke test: skipped ($*)"; exit 0; }

[[ ${SMOKE_SKIP:-0} != 1 ]] || skip "SMOKE_SKIP=1"
[[ $(id -u) == 0 ]] || skip "not root, so no Docker engine can be started here"
[[ -f $engine ]] || skip "no $engine to start a Docker engine with"

started=$SECONDS
echo "docker smoke test: starting the engine"
if ! bash "$engine" up >/dev/null; then  # its progress goes to stderr; stdout only repeats the env
  echo "docker smoke test: FAILED (the Docker engine did not start)" >&2
  exit 1
fi
eval "$(bash "$engine" env)"
echo "docker smoke test: engine ready after $((SECONDS - started)) s"

# timeout signals the whole process group: the test's EXIT trap still tears the containers down.
timeout "${SMOKE_TIMEOUT_S:-1200}" docker/smoke-test.sh
echo "docker smoke test: $((SECONDS - started)) s in all, engine start included"
