"""TLS settings of a node: file paths only, complete pairs, files that load; what they
change (https:// and raftqs:// URLs, no secret needed beyond loopback with peer TLS)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from node.config import ConfigError, load_config
from tests.support.tls import TestCA


def base(tmp_path: Path, raft: str = "127.0.0.1:7101") -> list[str]:
    return ["--id", "1", "--http", "127.0.0.1:7001", "--raft", raft, "--data-dir", str(tmp_path)]


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "certs")


def tls_flags(ca: TestCA) -> list[str]:
    server, peer = ca.server(), ca.peer(1)
    return [
        *("--tls-cert", str(server.cert), "--tls-key", str(server.key)),
        *("--peer-cert", str(peer.cert), "--peer-key", str(peer.key), "--peer-ca", str(ca.ca_file)),
    ]


def test_tls_makes_the_node_advertise_https_and_raftqs(tmp_path: Path, ca: TestCA) -> None:
    cfg = load_config([*base(tmp_path), *tls_flags(ca), "--tls-client-ca", str(ca.ca_file)])
    assert cfg.tls and cfg.peer_tls
    assert cfg.http_url == "https://127.0.0.1:7001"
    assert cfg.binary_url == "raftqs://127.0.0.1:7201"
    plain = load_config(base(tmp_path))
    assert not plain.tls and plain.http_url.startswith("http://")
    assert plain.binary_url == "raftq://127.0.0.1:7201"


def test_tls_settings_come_from_the_toml_file_too(tmp_path: Path, ca: TestCA) -> None:
    server = ca.server()
    path = tmp_path / "node.toml"
    path.write_text(
        f'id = 1\nhttp = "127.0.0.1:7001"\nraft = "127.0.0.1:7101"\ndata_dir = "{tmp_path}"\n'
        f'tls_cert = "{server.cert}"\ntls-key = "{server.key}"\ntls_ca = "{ca.ca_file}"\n'
    )
    cfg = load_config(["--config", str(path)])
    assert cfg.tls_cert == str(server.cert) and cfg.tls_ca == str(ca.ca_file)


def test_peer_tls_replaces_the_secret_beyond_loopback(tmp_path: Path, ca: TestCA) -> None:
    with pytest.raises(ConfigError, match="--secret-file"):
        load_config(base(tmp_path, raft="0.0.0.0:7101"))
    cfg = load_config([*base(tmp_path, raft="0.0.0.0:7101"), *tls_flags(ca)])
    assert cfg.peer_tls and cfg.secret is None


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("--tls-key", "--tls-cert and --tls-key go together"),
        ("--tls-cert", "--tls-cert and --tls-key go together"),
        ("--peer-key", r"missing: --peer-key"),
        ("--peer-ca", r"missing: --peer-ca"),
    ],
)
def test_half_a_pair_is_refused(tmp_path: Path, ca: TestCA, drop: str, message: str) -> None:
    flags = tls_flags(ca)
    i = flags.index(drop)
    del flags[i : i + 2]
    with pytest.raises(ConfigError, match=message):
        load_config([*base(tmp_path), *flags])


def test_client_certificates_need_a_tls_client_port(tmp_path: Path, ca: TestCA) -> None:
    with pytest.raises(ConfigError, match="--tls-client-ca requires"):
        load_config([*base(tmp_path), "--tls-client-ca", str(ca.ca_file)])


def test_a_missing_file_is_named(tmp_path: Path, ca: TestCA) -> None:
    flags = tls_flags(ca)
    flags[flags.index("--peer-ca") + 1] = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match=r"--peer-ca: no such file .*nope\.pem"):
        load_config([*base(tmp_path), *flags])


def test_inline_key_material_is_refused(tmp_path: Path, ca: TestCA) -> None:
    flags = tls_flags(ca)
    flags[flags.index("--tls-key") + 1] = ca.server().key.read_text()
    with pytest.raises(ConfigError, match="path of a PEM file, not its contents"):
        load_config([*base(tmp_path), *flags])


def test_a_key_that_does_not_match_its_certificate_is_refused(tmp_path: Path, ca: TestCA) -> None:
    flags = tls_flags(ca)
    flags[flags.index("--tls-key") + 1] = str(ca.issue("other", "other.test").key)
    with pytest.raises(ConfigError, match="--tls-cert/--tls-key"):
        load_config([*base(tmp_path), *flags])


def test_a_file_that_is_not_pem_is_refused(tmp_path: Path, ca: TestCA) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="--tls-ca"):
        load_config([*base(tmp_path), "--tls-ca", str(junk)])


@pytest.mark.skipif(sys.platform == "win32", reason="file modes")
def test_an_unreadable_file_is_refused(tmp_path: Path, ca: TestCA) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    flags = tls_flags(ca)
    key = Path(flags[flags.index("--tls-key") + 1])
    key.chmod(0)
    with pytest.raises(ConfigError, match="not readable"):
        load_config([*base(tmp_path), *flags])


def test_peers_that_name_this_node_by_http_while_it_serves_https(
    tmp_path: Path, ca: TestCA
) -> None:
    peers = "1=http://127.0.0.1:7001@127.0.0.1:7101,2=https://127.0.0.1:7002@127.0.0.1:7102"
    with pytest.raises(ConfigError, match="serves https://"):
        load_config([*base(tmp_path), *tls_flags(ca), "--peers", peers])


def test_the_node_command_says_what_is_wrong_and_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "node", *base(tmp_path), "--tls-cert", str(tmp_path / "x.pem")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--tls-cert: no such file" in proc.stderr
