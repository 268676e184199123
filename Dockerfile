# Custom worker (SDK harness) container for Dataflow GPU workers; also usable as the Flex Template
# image (see docs/running.md). tests/test_packaging.py checks what can be checked here without Docker.
#
# Build and push to Artifact Registry (Docker-format repository REPO in REGION of PROJECT):
#   gcloud artifacts repositories create REPO --repository-format=docker --location=REGION
#   gcloud auth configure-docker REGION-docker.pkg.dev
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/embed:TAG .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/embed:TAG
# or, with no local Docker engine, build remotely with Cloud Build:
#   gcloud builds submit --tag REGION-docker.pkg.dev/PROJECT/REPO/embed:TAG .
# Launch with --sdk_container_image=REGION-docker.pkg.dev/PROJECT/REPO/embed:TAG, from a launch
# environment with the same Python minor version (3.11) and apache-beam version (2.77.0) as below.
#
# CUDA / cuDNN. TensorFlow 2.21's tested Linux GPU build is CUDA 12.5 with cuDNN 9.3 (the
# "tested build configurations" table of tensorflow.org/install/source; the installed 2.21.0
# wheel's tf.sysconfig.get_build_info() also reports cuda_version 12.5.1, cudnn_version 9). The
# base below is CUDA 12.5.1 with cuDNN 9 on Ubuntu 22.04. Which cuDNN 9 minor that tag ships was
# not verified here; it does not decide what runs: tensorflow[and-cuda] installs the CUDA 12.5 and
# cuDNN >= 9.3 libraries as pip wheels (nvidia-cudnn-cu12 >= 9.3.0.75, ...), and TensorFlow's
# shared objects find those first through their RUNPATH. The NVIDIA driver comes from the Dataflow
# worker VM (worker_accelerator=...;install-nvidia-driver) and is mounted into the container.
FROM nvidia/cuda:12.5.1-cudnn-runtime-ubuntu22.04

# Python 3.11 (Ubuntu 22.04 ships 3.10), from the deadsnakes PPA, in a virtual environment that is
# first on PATH, so that `python` is this interpreter for us and for the Beam boot entrypoint.
# RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1: since Beam 2.44 the boot entrypoint otherwise starts the
# SDK worker in a fresh virtual environment of its own, which would not see the packages installed
# in /opt/venv (Dataflow's "Build custom container images" guide names this variable for that case).
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH \
    RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common ca-certificates \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && python3.11 -m venv /opt/venv \
    && apt-get purge -y software-properties-common \
    && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/*

# TensorFlow with its CUDA libraries first (the big, rarely changing layer), then this package with
# its [dataflow] extra (apache-beam[gcp] 2.77: the Dataflow runner's and the Flex Template launcher's
# Google Cloud clients, which the base install leaves out); install_requires pin keras < 3.16.
RUN pip install --upgrade pip \
    && pip install "tensorflow[and-cuda]==2.21.*"
COPY . /app
RUN pip install "/app[dataflow]" \
    && pip check

# Flex Template: the launcher runs this file with the template parameters as --name=value flags.
# A file outside the package directory: running beam_pipeline/__main__.py as a script would put
# beam_pipeline/ first on sys.path, where beam_pipeline/inspect.py would shadow the stdlib inspect.
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/main.py
RUN mkdir -p /template \
    && printf 'import sys\n\nfrom beam_pipeline.__main__ import main\n\nsys.exit(main())\n' > /template/main.py
COPY --from=gcr.io/dataflow-templates-base/python311-template-launcher-base:latest /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher

# The Beam SDK harness entrypoint, from the SDK image of the same Beam and Python versions.
COPY --from=apache/beam_python3.11_sdk:2.77.0 /opt/apache/beam /opt/apache/beam
ENTRYPOINT ["/opt/apache/beam/boot"]
