#!/usr/bin/env bash
# The `engines` service of docker-compose.yml: runs the export's own tensorrt/build_engines.sh (trtexec, inside
# NVIDIA's Triton container, on the GPU it is given), unless the engines are already up to date.
#
# Up to date means: every tensorrt_plan model of tensorrt/model_repository has 1/model.plan, built by this
# wrapper from the same manifest.json and build_engines.sh, on the same GPU model, with the same TensorRT version
# (engines are specific to both). That key is kept in tensorrt/.engines-stamp. MTASR_REBUILD_ENGINES=1 forces a
# rebuild. Exit status: 0 built or up to date; 2 no export, no trtexec or no GPU; else build_engines.sh's status.
set -euo pipefail

EXPORT="${MTASR_EXPORT:-/export}"
SCRIPT="$EXPORT/tensorrt/build_engines.sh"
MANIFEST="$EXPORT/model_repository/manifest.json"
TRT_REPO="$EXPORT/tensorrt/model_repository"
STAMP="$EXPORT/tensorrt/.engines-stamp"

fail() {
    echo "error: $*" >&2
    exit 2
}

[[ -f "$SCRIPT" && -f "$MANIFEST" ]] ||
    fail "no export at $EXPORT (missing ${SCRIPT#"$EXPORT"/} or ${MANIFEST#"$EXPORT"/}): run" \
        "\`mtasr export ... --output DIR\` first and set MTASR_EXPORT_DIR=DIR (default ./artifacts/export)"
# NVIDIA's images keep trtexec in /usr/src/tensorrt/bin, which is not on PATH; build_engines.sh looks it up on PATH.
TRTEXEC_DIR="${MTASR_TRTEXEC_DIR:-/usr/src/tensorrt/bin}"
if ! command -v trtexec >/dev/null && [[ -x "$TRTEXEC_DIR/trtexec" ]]; then
    export PATH="$PATH:$TRTEXEC_DIR"
fi
command -v trtexec >/dev/null || fail "trtexec not found (not on PATH, not in $TRTEXEC_DIR): use an NVIDIA image with TensorRT"
# The GPU model(s) this container was given: nvidia-smi, else the driver's /proc entries.
gpus=""
if command -v nvidia-smi >/dev/null; then
    gpus="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || true)"
fi
if [[ -z "$gpus" ]]; then
    gpus="$(cat "${MTASR_NVIDIA_PROC:-/proc/driver/nvidia}"/gpus/*/information 2>/dev/null |
        sed -n 's/^Model:[[:space:]]*//p' || true)"
fi
[[ -n "$gpus" ]] || fail "no NVIDIA GPU visible (no nvidia-smi answer, no /proc/driver/nvidia/gpus): reserve one"
# NVIDIA's containers set TRT_VERSION; trtexec's banner ("[TensorRT v100500]") is the fallback.
trt_version="${TRT_VERSION:-}"
if [[ -z "$trt_version" ]]; then
    banner="$(trtexec --help 2>&1 || true)"
    trt_version="$(grep -o -m1 'TensorRT v[0-9]*' <<<"$banner" || true)"
fi

key="$(
    {
        printf 'gpu=%s\ntensorrt=%s\n' "$gpus" "${trt_version:-unknown}"
        sha256sum <"$MANIFEST"
        sha256sum <"$SCRIPT"
    } | sha256sum | cut -d' ' -f1
)"

# Every tensorrt_plan model has its engine (other models, e.g. python-backend ones, have none to build).
all_plans_present() {
    local config found=0
    for config in "$TRT_REPO"/*/config.pbtxt; do
        [[ -e "$config" ]] || return 1
        grep -q 'tensorrt_plan' "$config" || continue
        [[ -s "$(dirname "$config")/1/model.plan" ]] || return 1
        found=1
    done
    ((found))
}

if [[ "${MTASR_REBUILD_ENGINES:-0}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$key" ]] && all_plans_present; then
    echo "TensorRT engines under $TRT_REPO are up to date (GPU: ${gpus//$'\n'/, }; ${trt_version:-TensorRT ?})."
    echo "Set MTASR_REBUILD_ENGINES=1 to rebuild them."
    exit 0
fi

echo "building TensorRT engines for ${gpus//$'\n'/, } (${trt_version:-TensorRT ?}) from $EXPORT/model_repository"
rm -f "$STAMP"
bash "$SCRIPT"
all_plans_present || fail "build_engines.sh finished but some model has no 1/model.plan under $TRT_REPO"
echo "$key" >"$STAMP"
# Give what was written back to the owner of the export folder (this container runs as root).
chown -R --reference="$EXPORT" "$EXPORT/tensorrt" 2>/dev/null || true
echo "engines ready under $TRT_REPO"
