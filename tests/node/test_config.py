"""Node configuration: flags, TOML, and clear errors for bad settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from node.config import ConfigError, load_config, parse_peers

PEERS = "1=http://127.0.0.1:7001@127.0.0.1:7101,2=http://127.0.0.1:7002@127.0.0.1:7102"


def test_flags_build_a_config():
    cfg = load_config(
        [
            "--id",
            "1",
            "--http",
            "127.0.0.1:7001",
            "--raft",
            "127.0.0.1:7101",
            "--peers",
            PEERS,
            "--data-dir",
            "/tmp/x",
            "--unsafe-no-fsync",
        ]
    )
    assert cfg.node_id == 1 and cfg.http_url == "http://127.0.0.1:7001"
    assert cfg.raft_peers() == {1: ("127.0.0.1", 7101), 2: ("127.0.0.1", 7102)}
    assert cfg.fsync is False and cfg.limits.max_batch == 1000


def test_toml_file_and_flag_override(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text(
        'id = 2\nhttp = "127.0.0.1:7002"\nraft = "127.0.0.1:7102"\n'
        f'peers = "{PEERS}"\ndata-dir = "/tmp/n2"\ncluster_id = "prod"\n'
        "[limits]\nmax_batch = 10\n"
    )
    cfg = load_config(["--config", str(path), "--cluster-id", "override"])
    assert cfg.node_id == 2 and cfg.cluster_id == "override" and cfg.limits.max_batch == 10


@pytest.mark.parametrize(
    ("peers", "needle"),
    [
        ("x=http://a:1@b:2", "ID"),
        ("1=ftp://a:1@b:2", "http"),
        ("1=http://a:1@b", "HOST:PORT"),
        ("1=http://a:1@b:2,1=http://a:1@b:3", "twice"),
    ],
)
def test_bad_peers_are_named(peers, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_peers(peers)


def test_conflicting_self_address_is_refused():
    with pytest.raises(ConfigError, match="different"):
        load_config(
            [
                "--id",
                "1",
                "--http",
                "127.0.0.1:7001",
                "--raft",
                "127.0.0.1:9999",
                "--peers",
                PEERS,
                "--data-dir",
                "/tmp/x",
            ]
        )


def test_missing_setting_exits_2_with_a_message():
    proc = subprocess.run(
        [sys.executable, "-m", "node", "--id", "1", "--http", "127.0.0.1:7001"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "missing required setting" in proc.stderr


def test_fsync_cannot_be_turned_off_from_a_config_file(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text(
        'id = 2\nhttp = "127.0.0.1:7002"\nraft = "127.0.0.1:7102"\n'
        f'peers = "{PEERS}"\ndata-dir = "/tmp/n2"\nfsync = false\n'
    )
    with pytest.raises(ConfigError, match="--unsafe-no-fsync"):
        load_config(["--config", str(path)])
    with pytest.raises(SystemExit):  # the old flag is gone: its name did not say the cost
        load_config(["--config", str(path), "--no-fsync"])


def test_no_deploy_config_turns_fsync_off():
    deploy = Path(__file__).resolve().parents[2] / "deploy"
    for path in deploy.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert "no-fsync" not in text and "fsync = false" not in text, path


# ---------------------------------------------------------------- the peer secret

BASE = ["--id", "1", "--http", "127.0.0.1:7001", "--raft", "127.0.0.1:7101"]


def test_the_peer_secret_comes_from_a_file_without_its_trailing_newline(tmp_path):
    secret = tmp_path / "peer-secret"
    secret.write_text("0123456789abcdef-and-more\n")
    cfg = load_config([*BASE, "--data-dir", str(tmp_path), "--secret-file", str(secret)])
    assert cfg.secret == b"0123456789abcdef-and-more"
    assert load_config([*BASE, "--data-dir", str(tmp_path)]).secret is None


def test_a_short_or_missing_secret_file_is_refused(tmp_path):
    short = tmp_path / "short"
    short.write_text("tooshort\n")
    with pytest.raises(ConfigError, match="at least 16"):
        load_config([*BASE, "--data-dir", str(tmp_path), "--secret-file", str(short)])
    with pytest.raises(ConfigError, match="cannot read the secret file"):
        load_config([*BASE, "--data-dir", str(tmp_path), "--secret-file", str(tmp_path / "no")])


def test_a_secret_is_never_taken_from_the_command_line_or_inline(tmp_path):
    with pytest.raises(SystemExit):  # argparse: no such option
        load_config([*BASE, "--data-dir", str(tmp_path), "--secret", "0123456789abcdef"])
    toml = tmp_path / "node.toml"
    toml.write_text('secret = "0123456789abcdefghij"\n')
    with pytest.raises(ConfigError, match="read from a file"):
        load_config([*BASE, "--data-dir", str(tmp_path), "--config", str(toml)])


def test_a_peer_port_beyond_loopback_needs_a_secret(tmp_path):
    """Authenticated peers by default: only a loopback-only cluster may run without."""
    beyond = ["--id", "1", "--http", "0.0.0.0:7001", "--raft", "10.0.0.1:7101"]
    with pytest.raises(ConfigError, match="--secret-file"):
        load_config([*beyond, "--data-dir", str(tmp_path)])
    named = ["--id", "1", "--http", "0.0.0.0:7001", "--raft", "raftq1:7101"]
    with pytest.raises(ConfigError, match="--secret-file"):
        load_config([*named, "--data-dir", str(tmp_path)])
    secret = tmp_path / "peer-secret"
    secret.write_text("0123456789abcdef0123\n")
    cfg = load_config([*beyond, "--data-dir", str(tmp_path), "--secret-file", str(secret)])
    assert cfg.secret == b"0123456789abcdef0123"
    for host in ("127.0.0.1", "localhost", "::1"):
        raft = f"[{host}]:7101" if ":" in host else f"{host}:7101"
        cfg = load_config(
            ["--id", "1", "--http", "127.0.0.1:7001", "--raft", raft, "--data-dir", str(tmp_path)]
        )
        assert cfg.secret is None


def _with_limits(tmp_path, limits: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "node.toml"
    path.write_text(
        'id = 1\nhttp = "127.0.0.1:7001"\nraft = "127.0.0.1:7101"\ndata-dir = "/tmp/n1"\n'
        f"[limits]\n{limits}\n"
    )
    return load_config(["--config", str(path)])


def test_connection_limits_have_defaults_and_come_from_the_limits_table(tmp_path):
    cfg = _with_limits(tmp_path, "max_long_polls = 10\nread_timeout_s = 5\nidle_timeout_s = 60.5")
    limits = cfg.limits
    assert (limits.max_long_polls, limits.read_timeout_s, limits.idle_timeout_s) == (10, 5, 60.5)
    assert limits.max_connections_per_address == 256
    assert limits.max_http_connections_per_address == 1024
    assert limits.max_inflight_request_bytes == 64 << 20


@pytest.mark.parametrize(
    ("limits", "needle"),
    [
        ("max_long_polls = 0", "max_long_polls must be a positive number"),
        ("read_timeout_s = -1", "read_timeout_s must be a positive number"),
        ('max_http_connections_per_address = "many"', "must be a positive number"),
        ("max_inflight_request_bytes = 1024", "at least max_body_bytes"),
    ],
)
def test_bad_connection_limits_are_refused_by_name(tmp_path, limits, needle):
    with pytest.raises(ConfigError, match=needle):
        _with_limits(tmp_path, limits)
