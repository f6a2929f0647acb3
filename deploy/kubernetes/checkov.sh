#!/usr/bin/env bash
# Render every variant of deploy/kubernetes (each overlay, and gpu with the models-volume component) and
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
mkdir "$out/volume"
rel="$(realpath --relative-to="$out/volume" "$here")"  # kustomize takes relative paths only
printf 'resources: ["%s"]\ncomponents: ["%s"]\n' "$rel/overlays/gpu" "$rel/components/models-volume" \
    > "$out/volume/kustomization.yaml"
"$kubectl" kustomize "$out/volume" > "$out/gpu-models-volume.yaml"
rm -r "$out/volume"

# --skip-download: no network for checkov's guideline links; the checks themselves ship in the package.
"${CHECKOV:-checkov}" -d "$out" --framework kubernetes --quiet --compact --skip-download
