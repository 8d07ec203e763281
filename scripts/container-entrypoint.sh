#!/bin/sh
# The container image's entrypoint (Dockerfile): the command each platform starts a container with, as ftune's.
# FTUNE_SERVE_ARGS: flags for `ftune serve` (e.g. "--max-texts 16 --timeout-s 10"), as SageMaker passes none; split
# at spaces, so no value may hold one.
set -eu
case "${1:-}" in
    train) shift; exec ftune cloud-train --platform sagemaker "$@" ;;  # SageMaker training: `IMAGE train`
    serve) shift; exec ftune serve --platform sagemaker ${FTUNE_SERVE_ARGS:-} "$@" ;;  # SageMaker: `IMAGE serve`
esac
if [ -n "${AIP_HTTP_PORT:-}" ]; then  # Vertex AI prediction sets it (and AIP_PREDICT_ROUTE, AIP_STORAGE_URI)
    exec ftune serve --platform vertex ${FTUNE_SERVE_ARGS:-} "$@"
fi
if [ -n "${AIP_MODEL_DIR:-}" ]; then  # Vertex AI custom training: the job's args are a config and --set overrides
    exec ftune cloud-train --platform vertex "$@"
fi
exec ftune "$@"
