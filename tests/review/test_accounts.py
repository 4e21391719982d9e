"""Reviewer accounts (Argon2id users file), the sign-in throttle, session tokens, `medassist users`."""

from __future__ import annotations

import io
import json
import os
import stat

import pytest

from medassist import cli
from medassist.errors import MedassistError
from medassist.review import accounts, session
from medassist.review.throttle import LoginThrottle
from review_factory import PASSWORD, Clock



@pytest.fixture()
def users_file(tmp_path):
    return tmp_path / "conf" / "review-users.json"


def test_default_users_file_is_beside_the_site_key(monkeypatch, tmp_path):
    monkeypatch.delenv(accounts.USERS_FILE_ENV, raising=False)
    monkeypatch.setenv("MEDASSIST_KEY_FILE", str(tmp_path / "k" / "site.key"))
    assert accounts.default_users_path() == tmp_path / "k" / "review-users.json"
    monkeypatch.setenv(accounts.USERS_FILE_ENV, str(tmp_path / "elsewhere.json"))
    assert accounts.default_users_path() == tmp_path / "elsewhere.json"


def test_add_list_verify_remove(users_file):
    assert accounts.list_accounts(users_file) == [] and not accounts.has_accounts(users_file)
    accounts.add_user("Dr.Grey", PASSWORD, users_file)
    accounts.add_user("house@clinic", "another long password", users_file)
    assert [a.name for a in accounts.list_accounts(users_file)] == ["dr.grey", "house@clinic"]
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    text = users_file.read_text()
    assert PASSWORD not in text and "$argon2id$" in text  # a hash, never the password
    assert accounts.verify_password("DR.GREY", PASSWORD, users_file) == "dr.grey"
    assert accounts.verify_password("dr.grey", PASSWORD + "x", users_file) is None
    assert accounts.verify_password("nobody", PASSWORD, users_file) is None
    with pytest.raises(MedassistError, match="exists already"):
        accounts.add_user("dr.grey", "yet another password", users_file)
    accounts.add_user("dr.grey", "a changed password", users_file, replace=True)
    assert accounts.verify_password("dr.grey", "a changed password", users_file) == "dr.grey"
    assert accounts.verify_password("dr.grey", PASSWORD, users_file) is None
    accounts.remove_user("dr.grey", users_file)
    assert not accounts.account_exists("dr.grey", users_file) and accounts.account_exists("house@clinic", users_file)
    with pytest.raises(MedassistError, match="no account dr.grey"):
        accounts.remove_user("dr.grey", users_file)


@pytest.mark.parametrize("name", ["", "Dr Grey", "dr.grey (unauthenticated, loopback)", ".hidden", "a" * 65, "ü"])
def test_bad_names_are_refused(users_file, name):
    with pytest.raises(MedassistError, match="not an account name"):
        accounts.add_user(name, PASSWORD, users_file)


def test_short_passwords_are_refused(users_file):
    with pytest.raises(MedassistError, match="too short"):
        accounts.add_user("dr.grey", "short", users_file)


def test_users_file_others_can_read_is_refused(users_file):
    accounts.add_user("dr.grey", PASSWORD, users_file)
    os.chmod(users_file, 0o644)
    with pytest.raises(MedassistError, match="accessible to others"):
        accounts.read_users(users_file)
    with pytest.raises(MedassistError, match="accessible to others"):
        accounts.verify_password("dr.grey", PASSWORD, users_file)


def test_a_file_that_is_not_a_users_file_is_refused(users_file):
    users_file.parent.mkdir(parents=True)
    users_file.write_text(json.dumps({"users": ["x"]}))
    os.chmod(users_file, 0o600)
    with pytest.raises(MedassistError, match="not a medassist users file"):
        accounts.read_users(users_file)


# -- throttle ----------------------------------------------------------------------------------------


def test_backoff_doubles_after_the_free_failures_and_is_capped():
    clock = Clock()
    throttle = LoginThrottle(clock=clock, free=3, base=5, cap=60)
    waits = [throttle.failure("dr.grey", "10.0.0.9") for _ in range(7)]
    assert waits == [0, 0, 0, 5, 10, 20, 40]
    assert throttle.retry_after("dr.grey", "10.0.0.9") == 40
    clock.now += 39.5
    assert throttle.retry_after("dr.grey", "10.0.0.9") == 1
    clock.now += 0.5
    assert throttle.retry_after("dr.grey", "10.0.0.9") == 0
    assert throttle.failure("dr.grey", "10.0.0.9") == 60  # 80 capped at 60
    assert throttle.failure("dr.grey", "10.0.0.9") == 60


def test_account_and_client_are_throttled_separately():
    clock = Clock()
    throttle = LoginThrottle(clock=clock, free=2, base=5)
    for client in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):  # one account, guessed from many clients
        throttle.failure("dr.grey", client)
    assert throttle.retry_after("dr.grey", "10.0.0.4") == 5  # the account is locked, from anywhere
    assert throttle.retry_after("house", "10.0.0.4") == 0  # other accounts are not
    for account in ("a", "b", "c"):  # many accounts, guessed from one client
        throttle.failure(account, "10.0.0.7")
    assert throttle.retry_after("house", "10.0.0.7") == 5  # that client is locked, for any account
    assert throttle.retry_after("house", "10.0.0.8") == 0


def test_success_clears_and_old_failures_are_forgotten():
    clock = Clock()
    throttle = LoginThrottle(clock=clock, free=1, base=5, forget=3600)
    throttle.failure("dr.grey", "c")
    throttle.success("dr.grey", "c")
    assert throttle.failures("dr.grey", "c") == (0, 0)
    throttle.failure("dr.grey", "c")
    throttle.failure("dr.grey", "c")
    assert throttle.failures("dr.grey", "c") == (2, 2)
    clock.now += 3601
    assert throttle.failures("dr.grey", "c") == (0, 0) and throttle.retry_after("dr.grey", "c") == 0


def test_memory_is_bounded():
    throttle = LoginThrottle(clock=Clock(), max_entries=10)
    for i in range(100):
        throttle.failure(f"user{i}", f"client{i}")
    assert len(throttle._entries) <= 10


def test_sign_in_is_refused_unchecked_while_locked(users_file):
    accounts.add_user("dr.grey", PASSWORD, users_file)
    clock = Clock()
    throttle = LoginThrottle(clock=clock, free=2, base=30)
    results = [accounts.sign_in("dr.grey", "guess", "10.0.0.9", throttle=throttle, path=users_file) for _ in range(3)]
    assert [r.message for r in results[:2]] == ["Wrong account name or password."] * 2
    assert results[2].retry_after == 30 and "try again in 30 s" in results[2].message
    locked = accounts.sign_in("dr.grey", PASSWORD, "10.0.0.9", throttle=throttle, path=users_file)
    assert locked.user is None and "try again in 30 s" in locked.message  # even the right password waits
    clock.now += 30
    assert accounts.sign_in("dr.grey", PASSWORD, "10.0.0.9", throttle=throttle, path=users_file).user == "dr.grey"
    assert throttle.failures("dr.grey", "10.0.0.9") == (0, 0)


# -- session tokens ----------------------------------------------------------------------------------


def test_session_tokens_verify_only_with_the_key_and_before_expiry():
    key = session.session_key(b"k" * 32)
    token, issued = session.issue(key, "dr.grey", now=1000, lifetime=60)
    assert session.verify(key, token, now=1010) == issued and issued.user == "dr.grey"
    assert session.verify(key, token, now=1061) is None
    assert session.verify(session.session_key(b"x" * 32), token, now=1010) is None
    payload, mac = token.split(".")
    forged = session.issue(key, "head.of.radiology", now=1000)[0].split(".")[0] + "." + mac
    assert session.verify(key, forged, now=1010) is None
    for junk in ("", "x", "a.b.c", payload + ".", "." + mac):
        assert session.verify(key, junk, now=1010) is None


# -- the users command ----------------------------------------------------------------------------


def test_users_command(users_file, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert cli.main(["users", "add", "Dr.Grey", "--password-stdin", "--users-file", str(users_file)]) == 0
    answers = iter(["a typed password", "a typed password"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert cli.main(["users", "add", "house", "--users-file", str(users_file)]) == 0
    assert accounts.verify_password("house", "a typed password", users_file) == "house"
    capsys.readouterr()
    assert cli.main(["users", "list", "--users-file", str(users_file)]) == 0
    listed = capsys.readouterr().out
    assert "dr.grey" in listed and "house" in listed and PASSWORD not in listed and "argon2" not in listed
    assert cli.main(["users", "remove", "house", "--users-file", str(users_file)]) == 0
    assert [a.name for a in accounts.list_accounts(users_file)] == ["dr.grey"]
    answers = iter(["one password here", "another password"])
    assert cli.main(["users", "add", "x", "--users-file", str(users_file)]) == 2
    assert "passwords differ" in capsys.readouterr().err
    assert cli.main(["users", "add", "bad name", "--users-file", str(users_file)]) == 2
    assert cli.main(["users", "remove", "nobody", "--users-file", str(users_file)]) == 2


def test_users_command_default_file_follows_the_environment(tmp_path, monkeypatch, capsys):
    target = tmp_path / "env-users.json"
    monkeypatch.setenv(accounts.USERS_FILE_ENV, str(target))
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert cli.main(["users", "add", "dr.grey", "--password-stdin"]) == 0
    assert accounts.list_accounts(target)[0].name == "dr.grey"
