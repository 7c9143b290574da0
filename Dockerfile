# syntax=docker/dockerfile:1
#
# fsm-cleaner image: the agent alone, installed from its wheel.
#
#   docker build -t fsm-cleaner:0.1.0 .
#
# The base is pinned by tag only: where this file was written no registry was reachable, so the
# digest could not be resolved. Pin it before a release, in both stages, as
#   python:3.12-slim-bookworm@sha256:<digest>   (docker buildx imagetools inspect python:3.12-slim-bookworm)
# The slim image already holds what the agent runs besides Python: `du` (coreutils) for the
# absolute threshold mode.

# --- build: the project's wheel, plus wheels of its dependencies --------------------------------
FROM python:3.12-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# .dockerignore lets only pyproject.toml, README.md, LICENSE and fsm_cleaner/ through.
COPY . .
# Every dependency ships a pure-Python or manylinux wheel: no compiler is needed, here or below.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
    && python -m pip wheel --only-binary=:all: --wheel-dir /wheels /wheels/fsm_cleaner-*.whl

# --- final: the installed wheel and its dependencies; no source tree, no build tools ------------
FROM python:3.12-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Installed offline from the build stage's wheels, bind-mounted (BuildKit, the default since
# Docker 23) so that they leave no layer behind. pip is removed afterwards: the agent does not need it.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links=/wheels /wheels/fsm_cleaner-*.whl \
    && python -m pip uninstall --yes pip \
    && fsm-cleaner --help > /dev/null

# No USER: the agent talks to the node's Docker socket (root:docker, mode 0660), which needs uid 0
# or the node's docker group, whose id differs between nodes. deploy/ runs it as uid 0 with every
# capability dropped and a read-only root filesystem.
#
# Exec form, so the agent is PID 1 and receives SIGTERM itself: it installs its own handler, stops
# removing, uncordons the node and exits within FSM_CLEANER_STOP_TIMEOUT_SECONDS (default 25).
# `docker stop` waits only 10 s by default: use `docker stop -t 30`.
ENTRYPOINT ["fsm-cleaner", "run"]
# Arguments go after `run`, e.g. `docker run ... fsm-cleaner:0.1.0 --once --dry-run`.
CMD []
# For plain Docker; Kubernetes ignores this and uses the DaemonSet's liveness probe instead.
HEALTHCHECK --interval=60s --timeout=10s --start-period=30s --retries=3 CMD ["fsm-cleaner", "healthcheck"]
