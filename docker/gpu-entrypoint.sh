#!/usr/bin/env bash
# The `triton-gpu` service of docker-compose.yml: inside NVIDIA's Triton container (python 3.10), make the mtasr
# package and the python backend's dependencies importable, then run `mtasr serve` on the given repository; it
# finds the container's own tritonserver (on PATH, backends in /opt/tritonserver/backends).
#
#   gpu-entrypoint.sh MODEL_REPOSITORY [mtasr serve options...]
#
# mtasr itself comes from the repository's ./mtasr folder, mounted read-only at $MTASR_SRC/mtasr and put on
# PYTHONPATH (the runtime core is pure Python). It is not pip-installed: pyproject.toml requires Python 3.11, and its
# serve extra would add a second tritonserver (nvidia-pytriton) and client-side packages the server never imports.
# The packages the python-backend models import (the names in PYTHON_BACKEND_DEPS, with the same specifiers as
# pyproject.toml, checked by tests/test_compose.py) are pip-installed once per key (Python version, this list,
# constraints.txt) into a folder of the $MTASR_SITE volume, which also goes on PYTHONPATH. The first start therefore
# needs to reach PyPI; later starts reuse the volume.
set -euo pipefail

MTASR_SRC="${MTASR_SRC:-/opt/mtasr/python}"
MTASR_SITE="${MTASR_SITE:-/opt/mtasr/site}"
MTASR_CONSTRAINTS="${MTASR_CONSTRAINTS:-/opt/mtasr/requirements/constraints.txt}"
PYTHON="${PYTHON:-python3}"
PYTHON_BACKEND_DEPS=("numpy>=1.24,<2" "onnxruntime>=1.18" "sentencepiece" "threadpoolctl")

if [[ $# -lt 1 ]]; then
    echo "usage: $0 MODEL_REPOSITORY [mtasr serve options...]" >&2
    exit 2
fi
[[ -f "$MTASR_SRC/mtasr/__init__.py" ]] || {
    echo "error: the mtasr package is not mounted at $MTASR_SRC/mtasr" >&2
    exit 2
}

key="$(
    {
        "$PYTHON" -c 'import sys; print(sys.version)'
        printf '%s\n' "${PYTHON_BACKEND_DEPS[@]}"
        cat "$MTASR_CONSTRAINTS" 2>/dev/null || true
    } | sha256sum | cut -c1-16
)"
site="$MTASR_SITE/deps-$key"
if [[ ! -d "$site" ]]; then
    echo "installing the python backend's dependencies (${PYTHON_BACKEND_DEPS[*]}) into $site"
    mkdir -p "$MTASR_SITE"
    tmp="$(mktemp -d "$MTASR_SITE/.install-XXXXXX")"
    constraints=()
    [[ -f "$MTASR_CONSTRAINTS" ]] && constraints=(-c "$MTASR_CONSTRAINTS")
    if ! "$PYTHON" -m pip install --no-cache-dir --disable-pip-version-check --no-warn-script-location \
        --target "$tmp" "${constraints[@]}" "${PYTHON_BACKEND_DEPS[@]}"; then
        rm -rf "$tmp"
        echo "error: could not install ${PYTHON_BACKEND_DEPS[*]} (the first start needs PyPI)" >&2
        exit 1
    fi
    # Drop installs for other keys (an older constraints file, another image), then publish this one.
    find "$MTASR_SITE" -mindepth 1 -maxdepth 1 -name 'deps-*' -exec rm -rf {} +
    mv "$tmp" "$site"
fi

export PYTHONPATH="$MTASR_SRC:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1 # the source is mounted read-only
# Fail here, in one line, rather than in every model's initialize().
"$PYTHON" -c 'import mtasr.triton.stage_model, numpy, onnxruntime, sentencepiece, threadpoolctl' || {
    echo "error: the python backend cannot import mtasr and its dependencies with PYTHONPATH=$PYTHONPATH" >&2
    exit 1
}
exec "$PYTHON" -m mtasr.cli serve "$@"
