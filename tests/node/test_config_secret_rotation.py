"""`--previous-secret-file`: the secret being rotated out, read from a file, only beside a
new `--secret-file`."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import ConfigError, load_config


def base(tmp_path: Path) -> list[str]:
    return ["--id", "1", "--http", "127.0.0.1:7001", "--raft", "127.0.0.1:7101",
            "--data-dir", str(tmp_path)]  # fmt: skip


def secret_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text + "\n")
    return str(path)


def test_the_previous_secret_is_read_beside_the_new_one(tmp_path: Path) -> None:
    new = secret_file(tmp_path, "new", "new-secret-0123456789")
    old = secret_file(tmp_path, "old", "old-secret-0123456789")
    cfg = load_config([*base(tmp_path), "--secret-file", new, "--previous-secret-file", old])
    assert cfg.secret == b"new-secret-0123456789"
    assert cfg.previous_secret == b"old-secret-0123456789"
    assert load_config([*base(tmp_path), "--secret-file", new]).previous_secret is None


def test_a_previous_secret_alone_is_refused(tmp_path: Path) -> None:
    old = secret_file(tmp_path, "old", "old-secret-0123456789")
    with pytest.raises(ConfigError, match="give the new one with --secret-file"):
        load_config([*base(tmp_path), "--previous-secret-file", old])


def test_a_short_previous_secret_is_refused(tmp_path: Path) -> None:
    new = secret_file(tmp_path, "new", "new-secret-0123456789")
    old = secret_file(tmp_path, "old", "short")
    with pytest.raises(ConfigError, match="use at least 16"):
        load_config([*base(tmp_path), "--secret-file", new, "--previous-secret-file", old])


def test_a_previous_secret_is_never_inline(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        f'id = 1\nhttp = "127.0.0.1:7001"\nraft = "127.0.0.1:7101"\ndata_dir = "{tmp_path}"\n'
        'previous_secret = "old-secret-0123456789"\n'
    )
    with pytest.raises(ConfigError, match="never given inline"):
        load_config(["--config", str(path)])
