"""Safe defaults of the deployment tooling: the SuperLink listens on loopback unless
`--host` exposes it (with a warning naming the unauthenticated port), private keys are
never readable by others, not even for a moment, an existing CA key is not replaced
without `--force`, and the CA key lives apart from the folder copied to the SuperLink."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from fl_app.deploy import credentials, superlink
from fl_app.deploy.credentials import make_ca, make_node_keys, make_server_certificate
from fl_app.deploy.preflight import check_superlink_connection, check_superlink_credentials
from fl_app.local_superlink import free_port, stop_process_tree

REPO = Path(__file__).resolve().parents[1]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def certificates(tmp_path):
    """The SuperLink's folder (ca.crt, server.crt, server.key) for 127.0.0.1 and localhost;
    the CA in tmp_path/ca."""
    make_ca(tmp_path / "ca")
    make_server_certificate(tmp_path / "ca", tmp_path / "certificates", ["127.0.0.1"])
    return tmp_path / "certificates"


@pytest.fixture
def launched(monkeypatch):
    """Run the SuperLink launcher's main() in-process; returns the command it would exec."""
    commands: list[list[str]] = []
    monkeypatch.setattr(superlink, "exec_command", commands.append)

    def launch(*args: str) -> list[str]:
        superlink.main(list(args))
        (command,) = commands[-1:]
        return command
    return launch


def host_of(command: list[str]) -> str:
    return command[command.index("--host") + 1]


@pytest.fixture
def umask_zero():
    """Umask 0 for the test: a file's mode is exactly what it was created with."""
    old = os.umask(0)
    yield
    os.umask(old)


# --- where the SuperLink listens ------------------------------------------------------


def test_superlink_listens_on_loopback_by_default(certificates, launched, capsys):
    command = launched("--certificates", str(certificates), "--port", "8123")
    assert host_of(command) == "127.0.0.1"
    assert capsys.readouterr().err == ""  # nothing exposed, nothing to warn about


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_superlink_on_an_explicit_loopback_host_does_not_warn(certificates, launched, capsys, host):
    assert host_of(launched("--certificates", str(certificates), "--host", host)) == host
    assert capsys.readouterr().err == ""


def test_exposing_the_superlink_takes_host_and_prints_one_warning(certificates, launched, capsys):
    command = launched("--certificates", str(certificates), "--host", "0.0.0.0", "--port", "8123")
    assert host_of(command) == "0.0.0.0"
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: listening on 0.0.0.0 port 8123")
    assert "Control API" in line and "no authentication" in line and "TCP port 8123" in line


def test_superlink_warns_about_a_ca_key_on_its_host(tmp_path, launched, capsys):
    """The old layout (CA key beside the SuperLink's credentials) still starts, with a
    warning to delete the key there."""
    make_ca(tmp_path / "old")
    make_server_certificate(tmp_path / "old", tmp_path / "old", ["127.0.0.1"])
    launched("--certificates", str(tmp_path / "old"))
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"warning: '{tmp_path / 'old' / 'ca.key'}' is on the SuperLink host")


@pytest.mark.integration
def test_started_superlink_listens_on_loopback_only(certificates, tmp_path):
    """The real SuperLink, started with the launcher's defaults: every socket it listens
    on is bound to a loopback address."""
    port, log = free_port(), tmp_path / "superlink.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fl_app.deploy.superlink",
                                 "--certificates", str(certificates), "--port", str(port),
                                 "--database", str(tmp_path / "state.db")],
                                cwd=tmp_path, env=os.environ | {"PYTHONPATH": str(REPO)},
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        check_superlink_connection(f"127.0.0.1:{port}", certificates / "ca.crt", wait=60)
        listening = [c.laddr for p in [psutil.Process(proc.pid),
                                       *psutil.Process(proc.pid).children(recursive=True)]
                     for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN]
    finally:
        stop_process_tree(proc.pid)
        proc.wait()
    output = log.read_text()
    assert ("127.0.0.1", port) in [(a.ip, a.port) for a in listening], output
    assert all(a.ip in ("127.0.0.1", "::1") for a in listening), (listening, output)
    assert "warning: listening on" not in output


# --- private keys ---------------------------------------------------------------------


def test_private_keys_are_created_owner_only(tmp_path, umask_zero, monkeypatch):
    """With umask 0 a plain write would leave a key 0666. Every chmod fails here, so the
    mode a key has is the mode it was created with: 0600, before any byte was written."""
    def no_chmod(*args, **kwargs):
        raise AssertionError("a private key must be created 0600, not narrowed afterwards")
    for name in ("chmod", "fchmod", "lchmod"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, no_chmod)
    make_ca(tmp_path / "ca")
    make_server_certificate(tmp_path / "ca", tmp_path / "certificates", ["127.0.0.1"])
    make_node_keys(tmp_path / "keys", "site-a")
    for key in (tmp_path / "ca" / "ca.key", tmp_path / "certificates" / "server.key",
                tmp_path / "keys" / "site-a"):
        assert mode(key) == 0o600, key
    assert mode(tmp_path / "ca") == 0o700
    assert mode(tmp_path / "keys" / "site-a.pub") == 0o666  # public: plain writes, umask 0
    # nothing left behind (no temporary copies of a key)
    assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == ["ca.crt", "ca.key"]
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["site-a", "site-a.pub"]


def test_replacing_a_world_readable_key_leaves_it_owner_only(tmp_path, umask_zero):
    """A key file that exists with broad permissions is replaced, not rewritten in place."""
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "site-a").write_bytes(b"old")
    os.chmod(tmp_path / "keys" / "site-a", 0o644)
    private, _ = make_node_keys(tmp_path / "keys", "site-a")
    assert mode(private) == 0o600 and private.read_bytes() != b"old"


# --- the CA ---------------------------------------------------------------------------


def run_credentials(capsys, *args: str) -> tuple[int, str, str]:
    """`python -m fl_app.deploy.credentials ARGS` in-process: (exit code, stdout, stderr)."""
    try:
        credentials.main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ca_refuses_to_replace_an_existing_key_without_force(tmp_path, capsys):
    ca_dir = tmp_path / "ca"
    assert run_credentials(capsys, "ca", "--out", str(ca_dir))[0] == 0
    key = (ca_dir / "ca.key").read_bytes()
    code, _, err = run_credentials(capsys, "ca", "--out", str(ca_dir))
    assert code == 2
    assert err.splitlines() == [
        f"error: CA key '{ca_dir / 'ca.key'}' already exists; a new CA invalidates every "
        "certificate the old one signed: pass --force to replace it"]
    assert (ca_dir / "ca.key").read_bytes() == key  # untouched

    assert run_credentials(capsys, "ca", "--out", str(ca_dir), "--force")[0] == 0
    assert (ca_dir / "ca.key").read_bytes() != key and mode(ca_dir / "ca.key") == 0o600


def test_ca_key_stays_out_of_the_superlink_folder(tmp_path, capsys, monkeypatch):
    """By default the CA goes to ca/ and the SuperLink's credentials, ca.crt included,
    to certificates/: the folder copied to the SuperLink host holds no CA key."""
    monkeypatch.chdir(tmp_path)
    assert run_credentials(capsys, "ca")[0] == 0
    code, out, _ = run_credentials(capsys, "server", "--host", "127.0.0.1")
    assert code == 0 and "copy 'certificates' to the SuperLink host" in out
    assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == ["ca.crt", "ca.key"]
    assert sorted(p.name for p in (tmp_path / "certificates").iterdir()) == \
        ["ca.crt", "server.crt", "server.key"]
    assert (tmp_path / "certificates" / "ca.crt").read_bytes() == (tmp_path / "ca" / "ca.crt").read_bytes()
    assert check_superlink_credentials(tmp_path / "certificates", "127.0.0.1")


@pytest.mark.parametrize("out", ["ca", "old"])
def test_server_refuses_a_folder_holding_a_ca_key(tmp_path, capsys, monkeypatch, out):
    """Writing the SuperLink's credentials next to a CA key (into the CA's own directory,
    or into a folder of the old layout) would ship the key to the SuperLink host."""
    monkeypatch.chdir(tmp_path)
    run_credentials(capsys, "ca", "--out", out)
    code, _, err = run_credentials(capsys, "server", "--ca", out, "--out", out, "--host", "127.0.0.1")
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith(f"error: '{Path(out) / 'ca.key'}' exists, but '{out}' is copied to the "
                           "SuperLink host and the CA key must never leave this machine")
    assert not (tmp_path / out / "server.key").exists()


def test_server_without_a_ca_says_how_to_create_one(tmp_path, capsys):
    code, _, err = run_credentials(capsys, "server", "--ca", str(tmp_path / "none"),
                                   "--out", str(tmp_path / "certificates"), "--host", "127.0.0.1")
    assert code == 2
    assert err.splitlines() == [
        f"error: no CA in '{tmp_path / 'none'}' (missing ca.crt, ca.key); create one with: "
        f"python -m fl_app.deploy.credentials ca --out {tmp_path / 'none'}"]

