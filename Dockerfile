# ftune as a container for Amazon SageMaker and Google Vertex AI (CPU). docs/cloud.md says how each platform runs it:
#   SageMaker   `IMAGE train` (ftune cloud-train) and `IMAGE serve` (ftune serve --platform sagemaker)
#   Vertex AI   the entrypoint with the job's arguments (a config, --set ...), or serving when AIP_HTTP_PORT is set
#   anything else is an ftune command: `docker run IMAGE runs list`, or --entrypoint ftune for `ftune train`
#
#   docker build -t ftune .
#
# Debian 12's Python is 3.11, the Python requirements.lock was made for. The exact versions of requirements.lock are
# installed with their hashes, as `make setup` does; torch's CPU build is not on PyPI, so its wheel comes from
# TORCH_WHEELS (PyTorch's CPU index, or a folder of wheels: --build-arg TORCH_WHEELS=/wheels with the folder mounted).
FROM debian:bookworm-slim

ARG TORCH_WHEELS=https://download.pytorch.org/whl/cpu/torch/
ARG UV_VERSION=0.13.9

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/ftune
COPY requirements.lock ./
RUN python3 -m venv /opt/ftune/venv \
 && /opt/ftune/venv/bin/pip install --quiet --no-cache-dir uv==${UV_VERSION} \
 && /opt/ftune/venv/bin/uv pip install --quiet --no-cache --python /opt/ftune/venv/bin/python --require-hashes \
      --find-links ${TORCH_WHEELS} -r requirements.lock
# the package last: a change to the code rebuilds this layer only, not the libraries'
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/ftune/venv/bin/uv pip install --quiet --no-cache --python /opt/ftune/venv/bin/python --no-deps . \
 && rm -rf src
COPY scripts/container-entrypoint.sh /usr/local/bin/ftune-entrypoint

# Logs reach CloudWatch and Cloud Logging as they are written; SageMaker runs containers as root (its documented
# expectation), so no other user is set.
ENV PATH=/opt/ftune/venv/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /workspace
EXPOSE 8080
# exec form: SageMaker's and Vertex AI's SIGTERM reaches ftune itself (the script execs it), which saves a checkpoint
ENTRYPOINT ["/usr/local/bin/ftune-entrypoint"]
