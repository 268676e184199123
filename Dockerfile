# The worker (SDK harness) image, for Dataflow GPU workers and for Flink's DOCKER environment: Beam's
# Python SDK image (Debian bookworm, Python 3.11, apache-beam 2.77.0, the boot entrypoint
# /opt/apache/beam/boot) + TensorFlow with its CUDA libraries as pip wheels + this package.
# The Flex Template image is built on top of it: container/flex-template.Dockerfile.
# tests/test_packaging.py checks this text; tests/test_container.py builds it and runs jobs in it.
#
# One text for production and for a machine that reaches only package registries: the base is a build
# argument. Production (defaults), with Docker:
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/embed:TAG .
# Without Docker (podman or buildah; docs/running.md, "Build the image without Docker"):
#   podman build -t REGION-docker.pkg.dev/PROJECT/REPO/embed:TAG .
# On stand-ins built from Debian's packages, PyPI and Beam's Go module (container/standins.sh):
#   podman build --build-arg BEAM_SDK_IMAGE=localhost/bre/beam_python3.11_sdk:2.77.0 -t IMAGE .
# Launch with --sdk_container_image=IMAGE (Dataflow) or --environment_type=DOCKER
# --environment_config=IMAGE (Flink), from a launching environment with the same Python minor version
# (3.11), apache-beam (2.77.0) and keras as the image: a mismatch fails the workers, not the launch.
#
# Why this base and not nvidia/cuda + Python from a PPA (the earlier text): TensorFlow's [and-cuda]
# extra installs CUDA 12.5 and cuDNN 9 as pip wheels (nvidia-*-cu12), which TensorFlow's shared objects
# find first through their RUNPATH, so the image needs no CUDA base; the NVIDIA driver comes from the
# worker VM (Dataflow: worker_accelerator=...;install-nvidia-driver) and is mounted into the container.
# Beam's SDK image already holds the interpreter, Beam and the boot entrypoint that Dataflow requires,
# built together by Beam; Beam's and Dataflow's GPU guides build on it the same way. Measured sizes and
# build times: docs/running.md, "Build and push the worker image".
ARG BEAM_SDK_IMAGE=apache/beam_python3.11_sdk:2.77.0
FROM ${BEAM_SDK_IMAGE}

# TENSORFLOW: tensorflow[and-cuda] for GPU workers (the default, what production builds); CI and CPU-only
# users may pass --build-arg TENSORFLOW=tensorflow==2.21.* (the same TensorFlow without the ~3 GB of
# CUDA wheels). RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1: since Beam 2.44 the boot entrypoint otherwise
# starts each SDK worker in a new virtual environment under /opt/apache/beam-venv (not writable by the
# non-root user below), and installs staged packages there; with it, the SDK worker runs this image's
# interpreter with the packages installed below, and staged packages (--setup_file) go to the user's site.
ARG TENSORFLOW="tensorflow[and-cuda]==2.21.*"
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1
RUN pip install "${TENSORFLOW}"

# This package with its [dataflow] extra (apache-beam[gcp], already in Beam's image); setup.py keeps
# apache-beam at the base image's 2.77 and keras below 3.16. pip check: no broken requirement.
COPY . /app
RUN pip install "/app[dataflow]" \
    && pip check

# Flex Template: the launcher (container/flex-template.Dockerfile) runs this file with the template
# parameters as --name=value flags. A file outside the package directory: running
# beam_pipeline/__main__.py as a script would put beam_pipeline/ first on sys.path, where
# beam_pipeline/inspect.py would shadow the stdlib inspect.
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/main.py
RUN mkdir -p /template \
    && printf 'import sys\n\nfrom beam_pipeline.__main__ import main\n\nsys.exit(main())\n' > /template/main.py

# The SDK harness runs as an unprivileged user: boot writes only under --semi_persist_dir (/tmp by
# default) and, with the variable above, installs staged packages with pip into ~/.local.
RUN useradd --uid 1000 --create-home --shell /bin/bash beam
USER 1000
WORKDIR /home/beam
ENTRYPOINT ["/opt/apache/beam/boot"]
