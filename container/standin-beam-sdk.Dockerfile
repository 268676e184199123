# Stand-in for apache/beam_python3.11_sdk:BEAM_VERSION, built by container/standins.sh from what is
# reachable here. Upstream (sdks/python/container/Dockerfile in Beam): python:3.11-bookworm (CPython in
# /usr/local, the system interpreter, run as root), Beam's pinned requirements and apache-beam[gcp]
# installed into it with pip, boot at /opt/apache/beam/boot, ENTRYPOINT boot. Here: Debian bookworm's
# python3.11 as the system interpreter (`python`, `pip` on PATH), apache-beam[gcp] from PyPI into
# /usr/local (Debian's "externally managed" marker removed, as the image is the environment), and boot
# built from Beam's Go module at the same version.
# One addition: this machine's CA bundle (host-ca.crt, the host's /etc/ssl/certs/ca-certificates.crt) as
# the image's, and pip told to use it, as the host's pip is: HTTPS to PyPI goes through a TLS-inspecting
# proxy here, whose CA only the host trusts. Images built on this one (our Dockerfile) inherit it; the
# upstream image needs nothing of the kind.
ARG BASE_IMAGE=localhost/bre/debian:bookworm
FROM ${BASE_IMAGE}
ARG BEAM_VERSION=2.77.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
COPY host-ca.crt /tmp/host-ca.crt
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip python-is-python3 \
       ca-certificates \
    && rm -rf /var/lib/apt/lists/* /usr/lib/python3.11/EXTERNALLY-MANAGED \
    && mv /tmp/host-ca.crt /etc/ssl/certs/ca-certificates.crt \
    && printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > /etc/pip.conf \
    && python -m pip install --upgrade pip \
    && pip install "apache-beam[gcp]==${BEAM_VERSION}" \
    && pip check
COPY boot /opt/apache/beam/boot
ENTRYPOINT ["/opt/apache/beam/boot"]
