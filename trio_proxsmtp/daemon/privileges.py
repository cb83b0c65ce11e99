"""Switching to the `User` of the config, after the listeners are bound (docs/behaviour.md §1, B16).

The reference dropped privileges before bind, so `User` and a port below 1024 could not be
combined; we look the user up early (so a typo fails before anything is bound) and switch
after bind. Unlike the reference we also clear the supplementary groups. With
`TransparentProxy: full` the switch keeps CAP_NET_ADMIN only, which IP_TRANSPARENT needs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import pwd

import attrs

from trio_proxsmtp.common.log import LOGGER_NAME

log = logging.getLogger(LOGGER_NAME)

CAP_NET_ADMIN = 12
_PR_SET_KEEPCAPS = 8
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(Exception):
    """The user switch failed; start-up must stop (exit 1)."""


@attrs.frozen
class UserInfo:
    name: str
    uid: int
    gid: int


def lookup_user(user: str) -> UserInfo:
    """Find a user by name or numeric uid; PrivilegeError("couldn't look up user: X")."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isascii() and user.isdigit() else pwd.getpwnam(user)
    except (KeyError, OverflowError):
        raise PrivilegeError(f"couldn't look up user: {user}") from None
    return UserInfo(entry.pw_name, entry.pw_uid, entry.pw_gid)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _keep_caps(libc: ctypes.CDLL, on: bool) -> None:
    if libc.prctl(_PR_SET_KEEPCAPS, int(on), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"couldn't set PR_SET_KEEPCAPS: {os.strerror(err)}")


def _only_net_admin(libc: ctypes.CDLL) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = 1 << CAP_NET_ADMIN
    if libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"couldn't keep CAP_NET_ADMIN: {os.strerror(err)}")


def switch_user(user: UserInfo, *, keep_net_admin: bool = False) -> list[str]:
    """Become `user` for good; returns warnings (not root: stay as we are)."""
    if os.geteuid() != 0:
        return [f"must be started as root to switch to user {user.name}"]
    libc = _libc() if keep_net_admin and user.uid != 0 else None
    try:
        if libc is not None:
            _keep_caps(libc, True)
        os.setgroups([])
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)
        if libc is not None:
            _only_net_admin(libc)
            _keep_caps(libc, False)
    except OSError as exc:
        raise PrivilegeError(f"couldn't switch to user {user.name}: {exc.strerror}") from None
    if user.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise PrivilegeError(f"still able to regain root after switching to {user.name}")
    log.debug("switched to user %s (uid %d, gid %d)", user.name, user.uid, user.gid)
    return []
