#!/bin/bash
# Launcher of one lab host. Run as: setsid unshare --mount --propagation private -- boot.sh ROOT NAME NETNS CGROUP
#   ROOT    the host's directory (upper/, work/, rootfs/ live there)
#   NAME    the host name (also the nspawn machine name)
#   NETNS   the host's network namespace name (/run/netns/NETNS)
#   CGROUP  the host's cgroup path relative to the hierarchy root, e.g. msl/meta1
# It mounts the host's overlays in this private mount namespace, creates the users on first boot, moves itself
# into the host's own cgroup, and execs systemd-nspawn (real systemd as the host's PID 1). Its PID is nspawn's.
set -euo pipefail
R=$1 NAME=$2 NS=$3 CG=$4

# This mount namespace is a copy of the root one: drop copies of other namespaces' /run/netns pins, so that
# this host never keeps another lab's (or another host's) network namespace alive after it is deleted.
findmnt -rn -o TARGET | grep '^/run/netns/' | while read -r m; do
  [ "$m" = "/run/netns/$NS" ] || umount -l "$m" 2>/dev/null || true
done
mkdir -p /run/systemd && mount -t tmpfs -o mode=755 tmpfs /run/systemd   # nspawn's state stays off the real /run

cd "$R/rootfs"
mkdir -p usr etc var root home tmp run proc sys dev opt srv mnt media
for d in etc var usr root home; do
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$R/upper/$d,workdir=$R/work/$d" "$d"
done
for l in bin sbin lib lib64; do [ -e "$l" ] || ln -s "usr/$l" "$l"; done

if ! grep -q '^ops:' etc/passwd; then   # first boot of this disk
  chroot . useradd -m -U -s /bin/bash -p '*' ops
  chroot . useradd -r -U -M -d /var/lib/databend -s /usr/sbin/nologin databend
  : > home/ops/.bashrc; : > home/ops/.profile
  mkdir -p home/ops/.ssh && cp "$R/authorized_keys" home/ops/.ssh/authorized_keys
  chmod 700 home/ops/.ssh && chmod 600 home/ops/.ssh/authorized_keys
  chroot . chown -R ops:ops /home/ops
  for d in var/lib/databend var/log/databend; do [ -d "$d" ] && chroot . chown -R databend:databend "/$d"; done
  # a meta config that carries the raft secret is readable by the service only (root:databend 640)
  if [ -f etc/databend/databend-meta.toml ] && grep -q '^raft_secret' etc/databend/databend-meta.toml; then
    chroot . chown root:databend /etc/databend/databend-meta.toml && chmod 640 etc/databend/databend-meta.toml
  fi
fi

for h in systemd unified; do
  mkdir -p "/sys/fs/cgroup/$h/$CG" && echo $$ > "/sys/fs/cgroup/$h/$CG/cgroup.procs"
done
exec systemd-nspawn -q -D "$R/rootfs" --boot --register=no --keep-unit --machine="$NAME" --link-journal=no \
  --resolv-conf=off --timezone=off --console=pipe --network-namespace-path="/run/netns/$NS" \
  -- systemd.unit=multi-user.target
