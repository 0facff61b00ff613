"""What a lab host's disk holds before it boots: files seeded into its overlay upper directories.

Overlayfs forbids writing an upper directory while it is mounted, so everything here happens before the host's
first boot; later changes go through SSH or `Lab.root_exec`.
"""
from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

OVERLAY_DIRS = ("etc", "var", "usr", "root", "home")

# Units enabled on this machine's image that must not run inside a test host.
MASKED_UNITS = (
    "postgresql.service", "e2scrub_reap.service", "apt-daily.timer", "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer", "e2scrub_all.timer", "fstrim.timer", "man-db.timer", "getty@tty1.service",
    "console-getty.service", "systemd-timesyncd.service", "systemd-pstore.service", "systemd-firstboot.service",
)

SSHD_CONFIG = """\
# lab host {name}: written by sandbox/hostfs.py
ListenAddress {ip}:22
HostKey /etc/ssh/ssh_host_ed25519_key
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM yes
PrintMotd no
UseDNS no
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
"""


@dataclass(frozen=True)
class HostSpec:
    """One lab host: `index` is 1-based in the order meta.., spare.., query..; `role` is meta|spare|query."""

    name: str
    index: int
    ip: str
    role: str

    @property
    def meta_id(self) -> int:
        """Raft node id of a meta host (the number in its name)."""
        return int(self.name.removeprefix("meta"))


def host_root(lab_dir: Path, name: str) -> Path:
    """Directory that holds host `name`'s disk (upper/, work/) and its launcher state."""
    return lab_dir / "hosts" / name


def upper(lab_dir: Path, name: str) -> Path:
    """The host's overlay upper root: upper/"etc/hosts" is the host's /etc/hosts."""
    return host_root(lab_dir, name) / "upper"


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write `text` to `path` (parents created) with `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def etc_hosts(hosts: list[HostSpec]) -> str:
    """Text of /etc/hosts on every lab host: localhost plus every lab host by name."""
    lines = ["127.0.0.1\tlocalhost"] + [f"{h.ip}\t{h.name}" for h in hosts]
    return "\n".join(lines) + "\n"


def seed_base(lab_dir: Path, host: HostSpec, hosts: list[HostSpec], client_pubkey: str) -> str:
    """Lay out host `host`'s disk: dirs, hostname, hosts, sshd + host key, sudo for ops, masks, empty dotfiles.

    Returns the host's public key line ("ssh-ed25519 AAAA...") for known_hosts.
    Side effects: creates lab_dir/hosts/<name>/ from scratch.
    """
    root = host_root(lab_dir, host.name)
    if root.exists():
        shutil.rmtree(root)
    up = root / "upper"
    for d in OVERLAY_DIRS:
        (up / d).mkdir(parents=True)
        (root / "work" / d).mkdir(parents=True)
    (root / "rootfs").mkdir()
    _write(root / "authorized_keys", client_pubkey, 0o600)
    _write(up / "etc/hostname", f"{host.name}\n")
    _write(up / "etc/hosts", etc_hosts(hosts))
    _write(up / "etc/machine-id", secrets.token_hex(16) + "\n", 0o444)
    _write(up / "etc/ssh/sshd_config", SSHD_CONFIG.format(name=host.name, ip=host.ip))
    key = up / "etc/ssh/ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", str(key)], check=True)
    _write(up / "etc/sudoers.d/ops", "ops ALL=(ALL) NOPASSWD:ALL\n", 0o440)
    units = up / "etc/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    for unit in MASKED_UNITS:
        (units / unit).symlink_to("/dev/null")
    for dotfile in (".bashrc", ".profile"):   # the machine's /root/.bashrc runs `pyenv init` (+200 ms per exec)
        _write(up / "root" / dotfile, "")
    return " ".join(key.with_suffix(".pub").read_text().split()[:2])
