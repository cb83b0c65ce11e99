"""User lookup and switching; the switch itself runs in a forked child (it is for good)."""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable

import pytest

from trio_proxsmtp.daemon.privileges import PrivilegeError, UserInfo, lookup_user, switch_user

NOBODY = pwd.getpwnam("nobody")


def in_child(body: Callable[[], str]) -> str:
    """Run body in a forked child and return the text it produced (or its error)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            text = body()
        except BaseException as exc:
            text = f"{type(exc).__name__}: {exc}"
        os.write(write_fd, text.encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        text = pipe.read().decode()
    os.waitpid(pid, 0)
    return text


def test_lookup_by_name_and_uid() -> None:
    expected = UserInfo("nobody", NOBODY.pw_uid, NOBODY.pw_gid)
    assert lookup_user("nobody") == expected
    assert lookup_user(str(NOBODY.pw_uid)) == expected


@pytest.mark.parametrize("user", ["no-such-user-here", "4000000000", "99999999999999999999999"])
def test_lookup_unknown(user: str) -> None:
    with pytest.raises(PrivilegeError, match=f"couldn't look up user: {user}"):
        lookup_user(user)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_switch_drops_everything_for_good() -> None:
    def body() -> str:
        os.setgroups([0, 1])
        warnings = switch_user(lookup_user("nobody"))
        try:
            os.setuid(0)
        except PermissionError:
            regained = "no"
        else:
            regained = "yes"
        return f"{warnings} {os.getresuid()} {os.getresgid()} {os.getgroups()} {regained}"

    uid, gid = NOBODY.pw_uid, NOBODY.pw_gid
    assert in_child(body) == f"[] {(uid, uid, uid)} {(gid, gid, gid)} [] no"


def test_not_root_only_warns() -> None:
    def body() -> str:
        if os.geteuid() == 0:
            os.setresuid(NOBODY.pw_uid, NOBODY.pw_uid, NOBODY.pw_uid)
        before = os.getresuid()
        warnings = switch_user(UserInfo("daemon", 1, 1))
        return f"{warnings} {os.getresuid() == before}"

    assert in_child(body) == "['must be started as root to switch to user daemon'] True"
