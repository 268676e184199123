# Sourced (bash): podman's settings for this machine, kept in the work tree's ignored .cache/container/.
#   CONTAINERS_CONF          no default ulimits (crun/runc cannot raise RLIMIT_NOFILE here), no pids limit,
#                            the host's cgroup namespace and cgroupfs (this host's hybrid cgroups: no systemd
#                            manager, no cgroup namespace), runc as the runtime (crun fails on the above)
#   CONTAINERS_STORAGE_CONF  a store of its own (so this checkout's images never meet another checkout's or
#                            the host's default store), with the overlay driver where the kernel lets root
#                            mount overlayfs, else vfs (a full copy of the file system per layer and per
#                            container: the ~5 GB worker image took ~25 GB and minutes per container start)
# BRE_CONTAINER_CACHE overrides the folder (default: .cache/container beside this script's folder).
BRE_CONTAINER_CACHE="${BRE_CONTAINER_CACHE:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.cache/container}"
mkdir -p "$BRE_CONTAINER_CACHE/storage" "$BRE_CONTAINER_CACHE/run"
# The driver is chosen once per store (a store cannot change driver): BRE_STORAGE_DRIVER, else overlay if
# a test mount works, else vfs.
if [ ! -s "$BRE_CONTAINER_CACHE/storage-driver" ]; then
  driver="${BRE_STORAGE_DRIVER:-}"
  if [ -z "$driver" ]; then
    probe="$(mktemp -d)"
    mkdir -p "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
    if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
         "$probe/merged" 2>/dev/null; then
      umount "$probe/merged"
      driver=overlay
    else
      driver=vfs
    fi
    rm -rf "$probe"
  fi
  echo "$driver" > "$BRE_CONTAINER_CACHE/storage-driver"
fi
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
driver = "$(cat "$BRE_CONTAINER_CACHE/storage-driver")"
graphroot = "$BRE_CONTAINER_CACHE/storage"
runroot = "$BRE_CONTAINER_CACHE/run"
CONF
mv -f "$BRE_CONTAINER_CACHE/containers.conf.$$" "$BRE_CONTAINER_CACHE/containers.conf"
mv -f "$BRE_CONTAINER_CACHE/storage.conf.$$" "$BRE_CONTAINER_CACHE/storage.conf"
export BRE_CONTAINER_CACHE
export CONTAINERS_CONF="$BRE_CONTAINER_CACHE/containers.conf"
export CONTAINERS_STORAGE_CONF="$BRE_CONTAINER_CACHE/storage.conf"
export BUILDAH_ISOLATION=chroot
