"""Tokens, permissions and the authenticator's cache, without a cluster; the users model
on a real LMDB state machine (bootstrap once, rotation, deletion)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest

from common.tokens import new_token, parse_token
from node import auth
from node.auth import ANYONE, CLUSTER, Authenticator, Principal, credential_for
from node.config import ConfigError, build_config
from node.http import ApiError

# ---------------------------------------------------------------- tokens


def test_a_token_names_its_user_and_carries_256_random_bits() -> None:
    token = new_token("app-1")
    user, secret = parse_token(token) or ("", "")
    assert user == "app-1" and len(secret) == 43 and token.startswith("rq1.app-1.")
    assert new_token("app-1") != token
    for bad in ("", "rq1.app", "rq1..x", f"rq2.app.{secret}", f"rq1.a.b.{secret}", token + "="):
        assert parse_token(bad) is None
    with pytest.raises(ValueError):
        new_token("has space")


def test_the_stored_credential_is_a_salted_hash_not_the_token() -> None:
    token = new_token("u")
    one, two = credential_for(token), credential_for(token)
    assert one["salt"] != two["salt"] and one["hash"] != two["hash"]
    assert token.encode() not in one["hash"] and len(one["hash"]) == 32
    secret = token.rsplit(".", 1)[1]
    assert auth.hash_secret(secret, one["salt"], one["iterations"]) == one["hash"]


# ---------------------------------------------------------------- permissions


def test_permissions_are_name_patterns_per_kind() -> None:
    p = Principal("app", {"read": ["orders", "audit.*"], "write": ["orders*"], "admin": []})
    assert p.may("read", "orders") and p.may("read", "audit.eu")
    assert not p.may("read", "orders.eu") and not p.may("read", "audit")
    assert p.may("write", "orders.eu") and not p.may("write", "billing")
    assert not p.may("admin", "orders")
    with pytest.raises(ApiError) as refused:
        p.require("write", "billing")
    assert refused.value.status == 403 and refused.value.code == "forbidden"


def test_cluster_actions_need_the_star_pattern_itself() -> None:
    """`orders*` matches every name starting with orders, never the whole cluster."""
    assert not Principal("a", {"admin": ["orders*", "?"]}).may("admin", CLUSTER)
    assert Principal("a", {"admin": ["*"]}).may("admin", CLUSTER)


def test_client_ids_live_in_the_callers_namespace() -> None:
    p = Principal("alice", {})
    assert p.scoped("p1") == "alice/p1" and p.unscoped("alice/p1") == "p1"
    assert ANYONE.scoped("p1") == "p1" and ANYONE.unscoped("p1") == "p1"


# ---------------------------------------------------------------- the authenticator


class Store:
    """node.users as the authenticator sees it: user() and a generation."""

    def __init__(self) -> None:
        self.users_gen = 0
        self.records: dict[str, dict[str, Any]] = {}

    def user(self, name: str) -> dict[str, Any] | None:
        return self.records.get(name)

    def put(self, token: str, permissions: dict[str, list[str]]) -> None:
        name = (parse_token(token) or ("", ""))[0]
        self.records[name] = {**_credential(token), "permissions": permissions}
        self.users_gen += 1


def _credential(token: str) -> dict[str, Any]:
    """credential_for's fields, made without the (counted) module hash."""
    salt = bytes(16)
    secret = token.rsplit(".", 1)[1]
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, auth.ITERATIONS)
    return {"salt": salt, "hash": digest, "iterations": auth.ITERATIONS}


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the slow hashes the authenticator runs."""
    calls: list[str] = []
    real = auth.hash_secret

    def counted(secret: str, salt: bytes, iterations: int) -> bytes:
        calls.append(secret)
        return real(secret, salt, iterations)

    monkeypatch.setattr(auth, "hash_secret", counted)
    return calls


async def _status(call: Any) -> int:
    try:
        await call
    except ApiError as err:
        return err.status
    return 200


async def test_a_token_is_hashed_once_then_answered_from_memory(hashes: list[str]) -> None:
    store, token = Store(), new_token("app")
    store.put(token, {"read": ["q"]})
    authn = Authenticator(store, enabled=True)
    for _ in range(3):
        who = await authn.principal(f"Bearer {token}")
        assert who.name == "app" and who.may("read", "q")
    assert len(hashes) == 1


async def test_missing_malformed_and_wrong_tokens_get_401(hashes: list[str]) -> None:
    store, token = Store(), new_token("app")
    store.put(token, {})
    authn = Authenticator(store, enabled=True)
    wrong = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for header in (None, "", "Basic abc", "Bearer ", "Bearer nonsense", f"Bearer {wrong}"):
        assert await _status(authn.principal(header)) == 401
    # the wrong token was hashed once and is then remembered as wrong (no second hash)
    assert await _status(authn.principal(f"Bearer {wrong}")) == 401
    assert len(hashes) == 1
    assert await _status(authn.principal(f"Bearer {new_token('ghost')}")) == 401
    assert len(hashes) == 1  # an unknown user costs no hash


async def test_a_rotated_or_deleted_token_stops_working_at_once(hashes: list[str]) -> None:
    store, old = Store(), new_token("app")
    store.put(old, {"write": ["*"]})
    authn = Authenticator(store, enabled=True)
    assert (await authn.verify(old)).name == "app"
    new = new_token("app")
    store.put(new, {"write": ["*"]})
    assert await _status(authn.verify(old)) == 401
    assert (await authn.verify(new)).name == "app"
    del store.records["app"]
    store.users_gen += 1
    assert await _status(authn.verify(new)) == 401


async def test_changed_permissions_apply_without_a_new_hash(hashes: list[str]) -> None:
    store, token = Store(), new_token("app")
    store.put(token, {"read": ["a"]})
    authn = Authenticator(store, enabled=True)
    assert (await authn.verify(token)).may("read", "a")
    store.records["app"] = {**store.records["app"], "permissions": {"read": ["b"]}}
    store.users_gen += 1
    who = await authn.verify(token)
    assert who.may("read", "b") and not who.may("read", "a") and len(hashes) == 1


async def test_auth_off_lets_anyone_in() -> None:
    authn = Authenticator(Store(), enabled=False)
    assert await authn.principal(None) is ANYONE


async def test_slow_hashes_run_one_at_a_time_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flood of made-up tokens costs one worker thread at a time; the loop stays free."""
    store = Store()
    token = new_token("app")
    store.put(token, {})
    running, peak = 0, 0
    real = auth.hash_secret

    def slow(secret: str, salt: bytes, iterations: int) -> bytes:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            return real(secret, salt, iterations)
        finally:
            running -= 1

    monkeypatch.setattr(auth, "hash_secret", slow)
    authn = Authenticator(store, enabled=True)
    made_up = [f"rq1.app.{new_token('x').rsplit('.', 1)[1]}" for _ in range(4)]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    beat = asyncio.ensure_future(ticker())
    statuses = await asyncio.gather(*(_status(authn.verify(t)) for t in made_up))
    beat.cancel()
    assert statuses == [401] * 4 and peak == 1 and ticks > 4


# ---------------------------------------------------------------- configuration


def _values(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "id": 1,
        "http": "127.0.0.1:7001",
        "raft": "127.0.0.1:7101",
        "data_dir": str(tmp_path),
        **extra,
    }


def test_auth_is_on_by_default_and_off_only_on_loopback(tmp_path: Path) -> None:
    assert build_config(_values(tmp_path)).auth is True
    assert build_config(_values(tmp_path, auth="off")).auth is False
    secret = tmp_path / "s"
    secret.write_text("x" * 32)
    with pytest.raises(ConfigError, match="loopback"):
        build_config(_values(tmp_path, http="0.0.0.0:7001", auth="off", secret_file=str(secret)))
    with pytest.raises(ConfigError, match="on or off"):
        build_config(_values(tmp_path, auth="maybe"))


def test_the_admin_token_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = new_token("admin")
    path = tmp_path / "admin-token"
    path.write_text(token + "\n")
    assert build_config(_values(tmp_path, admin_token_file=str(path))).admin_token == token
    monkeypatch.setenv("RAFTQ_ADMIN_TOKEN", token)
    assert build_config(_values(tmp_path)).admin_token == token
    path.write_text("not a token")
    with pytest.raises(ConfigError, match=r"rq1\.USER\.SECRET"):
        build_config(_values(tmp_path, admin_token_file=str(path)))
    with pytest.raises(ConfigError, match="cannot read"):
        build_config(_values(tmp_path, admin_token_file=str(tmp_path / "missing")))


# ---------------------------------------------------------------- node.users (real LMDB)


@pytest.fixture
def sm(tmp_path: Path) -> Any:
    from tests.node.harness import Harness

    h = Harness(str(tmp_path / "lmdb"))
    yield h
    h.close()


def _user_fields(token: str, **perms: list[str]) -> dict[str, Any]:
    name = (parse_token(token) or ("", ""))[0]
    return {"name": name, "permissions": perms, **credential_for(token)}


def test_users_are_added_changed_and_deleted_through_commands(sm: Any) -> None:
    token = new_token("app")
    added = sm.ok("user_add", **_user_fields(token, read=["q*"]))
    assert added["added"] and added["user"]["permissions"] == {
        "read": ["q*"],
        "write": [],
        "admin": [],
    }
    assert "hash" not in added["user"] and "salt" not in added["user"]
    assert sm.run("user_add", **_user_fields(token))["error"]["code"] == "conflict"
    gen = sm.sm.users_gen
    changed = sm.ok("user_update", name="app", permissions={"write": ["x"]})
    assert changed["user"]["permissions"]["write"] == ["x"] and sm.sm.users_gen > gen
    assert sm.sm.user("app")["permissions"]["write"] == ["x"]  # the cache saw the change
    assert [u["name"] for u in sm.sm.list_users()] == ["app"]
    assert sm.ok("user_delete", name="app") == {"deleted": "app"}
    assert sm.sm.user("app") is None
    assert sm.run("user_delete", name="app")["error"]["code"] == "not_found"


def test_bad_user_commands_change_nothing(sm: Any) -> None:
    before = sm.sm.state_hash()
    token = new_token("app")
    for fields in (
        {**_user_fields(token), "name": "bad name"},
        {**_user_fields(token), "permissions": {"delete": ["*"]}},
        {**_user_fields(token), "permissions": {"read": ["a/b"]}},
        {**_user_fields(token), "permissions": {"read": "*"}},
        {**_user_fields(token), "salt": b"short"},
        {**_user_fields(token), "iterations": 1},
    ):
        assert sm.run("user_add", **fields)["error"]["code"] == "bad_request"
    assert sm.run("user_update", name="ghost", permissions={})["error"]["code"] == "not_found"
    sm.ok("user_add", **_user_fields(token))
    after_add = sm.sm.state_hash()
    assert sm.run("user_update", name="app")["error"]["code"] == "bad_request"
    assert sm.sm.state_hash() == after_add != before


def test_the_bootstrap_admin_is_added_once_in_the_clusters_life(sm: Any) -> None:
    """A node restarted later with the old token file must not bring a deleted admin back."""
    first, second = new_token("admin"), new_token("root")
    assert sm.ok("user_add", bootstrap=True, **_user_fields(first, admin=["*"]))["added"]
    assert not sm.ok("user_add", bootstrap=True, **_user_fields(second, admin=["*"]))["added"]
    sm.ok("user_delete", name="admin")
    assert not sm.ok("user_add", bootstrap=True, **_user_fields(first, admin=["*"]))["added"]
    assert sm.sm.list_users() == [] and sm.sm.users_bootstrapped()


def test_users_survive_a_snapshot_and_restore(sm: Any, tmp_path: Path) -> None:
    from tests.node.harness import Harness

    token = new_token("app")
    sm.ok("user_add", **_user_fields(token, write=["*"]))
    path = str(tmp_path / "snap")
    sm.sm.snapshot_in_child = False
    sm.sm.write_snapshot(path)
    other = Harness(str(tmp_path / "other"))
    try:
        other.sm.env.write(lambda txn: other.sm.restore_in_txn(txn, path))
        other.sm.restored()
        record = other.sm.user("app")
        assert record is not None and record["permissions"]["write"] == ["*"]
        assert other.sm.state_hash() == sm.sm.state_hash()
    finally:
        other.close()
