"""A throwaway OpenSSH server on 127.0.0.1: own host key, own client key, own config, free port."""

from __future__ import annotations

import contextlib
import getpass
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .processes import free_port, is_listening, stop, wait_for

SSHD = "/usr/sbin/sshd"  # sshd refuses to re-exec itself unless started by absolute path

SSH_CLIENT_OPTIONS = ["UserKnownHostsFile=/dev/null", "StrictHostKeyChecking=no", "BatchMode=yes", "LogLevel=ERROR"]


@dataclass(frozen=True)
class SshServer:
    user: str
    port: int
    identity: Path
    log: Path

    @property
    def destination(self) -> str:
        return f"{self.user}@127.0.0.1"

    def host_args(self) -> list[str]:
        """The membt-host options that reach this server."""
        args = ["--ssh", self.destination, "--port", str(self.port), "-i", str(self.identity)]
        for option in SSH_CLIENT_OPTIONS:
            args += ["--ssh-option", option]
        return args

    def ssh_argv(self, command: str) -> list[str]:
        """A plain OpenSSH client command line running `command` on this server."""
        argv = ["ssh", "-p", str(self.port), "-i", str(self.identity)]
        for option in SSH_CLIENT_OPTIONS:
            argv += ["-o", option]
        return [*argv, self.destination, command]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "membt-test", "-f", str(path)],
                   check=True, timeout=30, stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def running_sshd(workdir: Path) -> Iterator[SshServer]:
    """Start sshd -D on a free loopback port, check that a key login runs a command, stop it after."""
    workdir.mkdir(parents=True, exist_ok=True)
    host_key, client_key = workdir / "host_ed25519", workdir / "client_ed25519"
    _keygen(host_key)
    _keygen(client_key)
    authorized = workdir / "authorized_keys"
    authorized.write_text(Path(f"{client_key}.pub").read_text())
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory

    port = free_port()
    config = workdir / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {host_key}",
        f"PidFile {workdir / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "PrintMotd no",
        "LogLevel VERBOSE",
        "",
    ]))
    log = workdir / "sshd.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: is_listening(port), 20, f"sshd to listen on 127.0.0.1:{port} (log: {log})", proc)
        server = SshServer(getpass.getuser(), port, client_key, log)
        check = subprocess.run(server.ssh_argv("echo ok"), check=False, capture_output=True, text=True, timeout=30,
                               stdin=subprocess.DEVNULL)
        assert check.stdout.strip() == "ok", f"ssh login to the test sshd failed: {check.stderr}\n{log.read_text()}"
        yield server
    finally:
        stop(proc)
