# Sourced (bash): podman's settings for this machine, kept in the work tree's ignored .cache/container/.
#   CONTAINERS_CONF          no default ulimits (crun/runc cannot raise RLIMIT_NOFILE here), no pids limit,
#                            the host's cgroup namespace and cgroupfs (this host's hybrid cgroups: no systemd
#                            manager, no cgroup namespace), runc as the runtime (crun fails on the above)
#   CONTAINERS_STORAGE_CONF  the vfs driver (no overlay mounts in this sandbox) with its own root, so this
#                            checkout's images never meet another checkout's or the host's default store
# BRE_CONTAINER_CACHE overrides the folder (default: .cache/container beside this script's folder).
BRE_CONTAINER_CACHE="${BRE_CONTAINER_CACHE:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.cache/container}"
mkdir -p "$BRE_CONTAINER_CACHE/storage" "$BRE_CONTAINER_CACHE/run"
cat > "$BRE_CONTAINER_CACHE/containers.conf.$$" <<CONF
[containers]
default_ulimits = []
pids_limit = 0
cgroupns = "host"

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
CONF
cat > "$BRE_CONTAINER_CACHE/storage.conf.$$" <<CONF
[storage]
driver = "vfs"
graphroot = "$BRE_CONTAINER_CACHE/storage"
runroot = "$BRE_CONTAINER_CACHE/run"
CONF
mv -f "$BRE_CONTAINER_CACHE/containers.conf.$$" "$BRE_CONTAINER_CACHE/containers.conf"
mv -f "$BRE_CONTAINER_CACHE/storage.conf.$$" "$BRE_CONTAINER_CACHE/storage.conf"
export BRE_CONTAINER_CACHE
export CONTAINERS_CONF="$BRE_CONTAINER_CACHE/containers.conf"
export CONTAINERS_STORAGE_CONF="$BRE_CONTAINER_CACHE/storage.conf"
export BUILDAH_ISOLATION=chroot
