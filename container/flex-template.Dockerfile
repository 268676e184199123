# The Flex Template image: the worker image (the repository's Dockerfile) + Google's Python template
# launcher, which is published only on gcr.io. Built apart so that the worker image builds where
# gcr.io is not reachable (CI, air-gapped builders):
#   docker build -f container/flex-template.Dockerfile \
#     --build-arg WORKER_IMAGE=REGION-docker.pkg.dev/PROJECT/REPO/embed:TAG \
#     -t REGION-docker.pkg.dev/PROJECT/REPO/embed-template:TAG container
# The launcher writes its logs under /var/log/dataflow and fails as a non-root user, so this image runs
# as root. The entrypoint stays Beam's boot (the launcher VM starts the launcher binary itself), so the
# same image can also be the jobs' --sdk_container_image, as in Google's Flex Template samples.
ARG LAUNCHER_IMAGE=gcr.io/dataflow-templates-base/python311-template-launcher-base:latest
ARG WORKER_IMAGE
FROM ${LAUNCHER_IMAGE} AS launcher

FROM ${WORKER_IMAGE}
USER root
COPY --from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher
