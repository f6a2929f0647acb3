#!/usr/bin/env bash
# Render every variant of deploy/kubernetes (each overlay, and gpu with each component) and
# scan it with checkov. Fails on any failing check; the deliberate exceptions are `checkov.io/skip*`
# annotations on the resources, each with its reason.
#   KUBECTL=.venv/bin/kubectl CHECKOV=.venv-checkov/bin/checkov bash deploy/kubernetes/checkov.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
kubectl="${KUBECTL:-kubectl}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

for overlay in "$here"/overlays/*/; do
    "$kubectl" kustomize "$overlay" > "$out/$(basename "$overlay").yaml"
done
for component in models-volume pod-monitor; do
    mkdir "$out/with"
    rel="$(realpath --relative-to="$out/with" "$here")"  # kustomize takes relative paths only
    printf 'resources: ["%s"]\ncomponents: ["%s"]\n' "$rel/overlays/gpu" "$rel/components/$component" \
        > "$out/with/kustomization.yaml"
    "$kubectl" kustomize "$out/with" > "$out/gpu-$component.yaml"
    rm -r "$out/with"
done

# --skip-download: no network for checkov's guideline links; the checks themselves ship in the package.
"${CHECKOV:-checkov}" -d "$out" --framework kubernetes --quiet --compact --skip-download
