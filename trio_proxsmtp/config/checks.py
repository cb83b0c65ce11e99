"""The checks a configuration passes after its options are parsed, and the TLS contexts
built from it once per load (so that `-t` and SIGHUP catch unusable files): the filter's
program, TempDirectory (as the user the daemon serves as), TLS towards clients
(TLSCertificate/TLSKey, ListenTLS) and towards the next server (OutTLS*).  An error is a
`ConfigError` naming the file, the line and the option; a warning is returned, never
printed here.
"""

from __future__ import annotations

import os
import pwd
import shutil
import ssl
import stat
from collections.abc import Collection

from trio_proxsmtp.common.address import AddressKind
from trio_proxsmtp.common.tls import TLSError, server_context, system_ca_available, upstream_context
from trio_proxsmtp.config.model import Config, ConfigError
from trio_proxsmtp.relay.settings import OutTLSMode, TransparentMode
from trio_proxsmtp.stages.settings import FilterType, direct_argv

__all__ = [
    "check_filter_program",
    "check_listen_tls",
    "check_message_timeout",
    "check_temp_directory",
    "out_tls_context",
    "server_tls_context",
]


def check_temp_directory(config: Config, line: int | None = None) -> list[str]:
    """Check that the daemon can create its spool files in TempDirectory.

    A TempDirectory that is missing, not a directory, on a read-only file system or not
    writable by the user the daemon serves as would get every message that needs the spool
    `451 Local Error`, so it stops the daemon at start, at -t and on a reload
    (docs/behaviour.md §2), as a missing filter program does.  That user is `User` when this
    process is root (asked in a child with that user's credentials: `_access_as`), else this
    process's own.  A `User` this process cannot become (-t run by another user) is not
    checked, and that is a warning.  Raises ConfigError naming the file, the line and the
    reason; returns the warnings.
    """
    directory = config.temp_directory

    def refuse(reason: str) -> ConfigError:
        return ConfigError(config.path, line, "TempDirectory", f"{directory}: {reason}")

    euid = os.geteuid()
    user = _lookup_user(config.user) if config.user is not None else None
    # The daemon serves as this process unless root switches it to User (privileges.py).
    other = user if user is not None and user.pw_uid != euid else None
    unchecked = (
        None
        if other is None or euid == 0
        else f"TempDirectory {directory!r}: not checked whether user {other.pw_name} may "
        "write to it (this process cannot take that user's credentials: -t as root checks it)"
    )
    try:
        st = os.stat(directory)
    except OSError as exc:
        if unchecked is not None and isinstance(exc, PermissionError):
            return [unchecked]  # a parent closed to us, maybe not to User
        raise refuse(exc.strerror or str(exc)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise refuse("not a directory")
    warnings: list[str] = []
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        warnings.append(
            f"TempDirectory {directory!r} is world-writable without the sticky bit: "
            "use a directory private to the proxy's user"
        )
    if _read_only(directory):
        raise refuse("read-only file system")
    if config.user is not None and user is None:
        return warnings  # an unknown User: the command line stops on it (daemon/cli.py)
    if unchecked is not None:
        return [*warnings, unchecked]
    if other is None:
        name = _user_name(euid)
        writable = os.access(
            directory, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids
        )
    else:
        name = other.pw_name
        answer = _access_as(directory, other.pw_uid, other.pw_gid)
        if answer is None:
            return [
                *warnings,
                f"TempDirectory {directory!r}: not checked whether user {name} "
                "may write to it (the check as that user failed)",
            ]
        writable = answer
    if not writable:
        raise refuse(f"not writable by user {name}")
    return warnings


def _read_only(directory: str) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False  # os.access below says whether it is usable


def _lookup_user(user: str) -> pwd.struct_passwd | None:
    """`User` as daemon/privileges.py `lookup_user` reads it (a name or a numeric uid); None
    when there is no such user."""
    try:
        return pwd.getpwuid(int(user)) if user.isascii() and user.isdigit() else pwd.getpwnam(user)
    except (KeyError, OverflowError):
        return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _access_as(directory: str, uid: int, gid: int) -> bool | None:
    """`os.access(directory, W_OK | X_OK)` with the credentials daemon/privileges.py
    `switch_user` gives the daemon (uid, gid, no supplementary groups), asked in a child so
    that this process stays root; the kernel decides, so the mode bits, ACLs and every
    parent directory's search permission count.  None when the child could not take them.
    """
    pid = os.fork()
    if pid == 0:  # the child: these calls, then _exit (no clean-up of the parent's state)
        code = 2
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            code = 0 if os.access(directory, os.W_OK | os.X_OK) else 1
        finally:
            os._exit(code)
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:  # reaped behind our back (SIGCHLD ignored)
        return None
    code = os.waitstatus_to_exitcode(status)
    return code == 0 if code in (0, 1) else None


def check_message_timeout(config: Config, lines: Collection[str] = ()) -> list[str]:
    """Warn when the waits after the client's final "." can add up past MessageTimeOut:
    FilterTimeout (with a FilterCommand that runs), MilterContentTimeout for each milter
    and ReplyTimeOut.  MessageTimeOut still holds (451 4.4.2), so such a stage may be cut
    before its own limit (docs/behaviour.md §8.1).  `lines`: the fields the file sets.
    The chain the file configures is checked: the stages' limits it sets, or all of them
    when it sets MessageTimeOut; the defaults alone never warn (MessageTimeOut bounds
    them), and without a filter or milters only the next server's replies follow."""
    stages: list[tuple[str, str, float]] = []  # (field, how it is shown, seconds)
    if config.filter_command and config.filter_type is not FilterType.REJECT:
        stages.append(
            ("filter_timeout", f"FilterTimeout {config.filter_timeout:g}", config.filter_timeout)
        )
    if config.scanners:  # they run at once: one ScannerTimeout (docs/behaviour.md §11.16)
        shown = f"ScannerTimeout {config.scanner_timeout:g}"
        stages.append(("scanner_timeout", shown, config.scanner_timeout))
    if config.milters:
        count = len(config.milters)
        each = f" x {count}" if count > 1 else ""
        shown = f"MilterContentTimeout {config.milter_content_timeout:g}{each}"
        stages.append(("milter_content_timeout", shown, config.milter_content_timeout * count))
    if not stages:
        return []
    stages.append(("reply_timeout", f"ReplyTimeOut {config.reply_timeout:g}", config.reply_timeout))
    every = "message_timeout" in lines
    chain = [(shown, seconds) for field, shown, seconds in stages if every or field in lines]
    total = sum(seconds for _, seconds in chain)
    if not chain or total <= config.message_timeout:
        return []
    return [
        f"{' + '.join(shown for shown, _ in chain)} = {total:g} s exceeds MessageTimeOut "
        f"{config.message_timeout:g}: a message slower than MessageTimeOut gets 451 before "
        "those timeouts pass; keep MessageTimeOut below the client's own (Postfix's "
        "smtpd_proxy_timeout, 100 s)"
    ]


def check_filter_program(config: Config, line: int | None = None) -> list[str]:
    """Check that the FilterCommand's program exists and can be executed.

    A missing filter would otherwise refuse every message with the shell's "not found"
    (and show its path to outside senders), so it stops the daemon at start, at -t and on
    a reload. A command with shell syntax (or a shell builtin) runs under ``/bin/sh -c``:
    its program is not checked, and that is a warning. Raises ConfigError naming the file,
    the line and the reason; returns the warnings.
    """
    command = config.filter_command
    if command is None or config.filter_type in (FilterType.REJECT, FilterType.SMTP):
        return []
    argv = direct_argv(command)
    if argv is None:
        return [
            f"FilterCommand {command!r} runs under /bin/sh -c (shell syntax or a builtin): "
            "its program could not be checked"
        ]
    program = argv[0]
    if "/" in program:
        try:
            st = os.stat(program)
        except OSError as exc:
            reason = f"{program}: {exc.strerror}"
        else:
            if not stat.S_ISREG(st.st_mode):
                reason = f"{program}: not a regular file"
            elif not os.access(program, os.X_OK):
                reason = f"{program}: not executable"
            else:
                return []
    elif shutil.which(program) is not None:
        return []
    else:
        reason = f"{program}: no executable of that name in PATH ({os.environ.get('PATH', '')})"
    raise ConfigError(config.path, line, "FilterCommand", reason)


def server_tls_context(config: Config, lines: dict[str, int]) -> ssl.SSLContext | None:
    """Both TLS options or neither, and a certificate that loads (so -t catches it)."""
    if config.tls_certificate is None and config.tls_key is None:
        return None
    if config.tls_certificate is None or config.tls_key is None:
        if config.tls_key is None:
            missing, given = "TLSKey", "tls_certificate"
        else:
            missing, given = "TLSCertificate", "tls_key"
        raise ConfigError(
            config.path, lines.get(given), missing, "required with the other TLS option"
        )
    try:
        return server_context(config.tls_certificate, config.tls_key)
    except TLSError as exc:
        raise ConfigError(
            config.path, lines.get("tls_certificate"), "TLSCertificate", str(exc)
        ) from None


def check_listen_tls(config: Config, lines: dict[str, int]) -> None:
    """ListenTLS needs the server certificate, and an address of its own."""
    listen_tls = config.listen_tls
    if listen_tls is None:
        return
    line = lines.get("listen_tls")
    if config.tls_context is None:
        raise ConfigError(config.path, line, "ListenTLS", "needs TLSCertificate and TLSKey")
    listen = config.listen
    if listen.kind is listen_tls.kind and (
        (listen.kind is AddressKind.UNIX and listen.path == listen_tls.path)
        or (
            listen.kind is AddressKind.TCP
            and listen.port == listen_tls.port
            and (listen.is_port_only or listen_tls.is_port_only or listen.host == listen_tls.host)
        )
    ):
        raise ConfigError(
            config.path, line, "ListenTLS", f"the same address as Listen ({listen.text})"
        )


_OUT_TLS_DETAILS = {
    "out_tls_verify": "OutTLSVerify",
    "out_tls_ca_file": "OutTLSCAFile",
    "out_tls_server_name": "OutTLSServerName",
    "out_tls_certificate": "OutTLSCertificate",
    "out_tls_key": "OutTLSKey",
}


def out_tls_context(
    config: Config, lines: dict[str, int], warnings: list[str]
) -> ssl.SSLContext | None:
    """The context for TLS to the next server, or None with OutTLS off (so -t checks it)."""
    path = config.path
    if (config.out_tls_certificate is None) != (config.out_tls_key is None):
        if config.out_tls_key is None:
            missing, given = "OutTLSKey", "out_tls_certificate"
        else:
            missing, given = "OutTLSCertificate", "out_tls_key"
        raise ConfigError(path, lines.get(given), missing, "required with the other of the two")
    if config.out_tls is OutTLSMode.OFF:
        ignored = [name for field, name in _OUT_TLS_DETAILS.items() if field in lines]
        if ignored:
            warnings.append(f"{', '.join(ignored)} ignored: OutTLS is off")
        return None
    verify = config.upstream_tls_verify
    # The option that made verification on: where an error about it points.
    verify_option = "OutTLSVerify" if "out_tls_verify" in lines else "OutTLS"
    verify_line = lines.get("out_tls_verify", lines.get("out_tls"))
    if not verify and config.out_tls_ca_file is not None:
        warnings.append("OutTLSCAFile ignored: OutTLSVerify is off")
    if verify:
        address = config.out_address
        if (
            config.out_tls_server_name is None
            and address is not None
            and address.kind is AddressKind.UNIX
            and config.transparent_proxy is TransparentMode.OFF
        ):
            raise ConfigError(
                path,
                verify_line,
                verify_option,
                "verifying the next server needs OutTLSServerName: OutAddress is a Unix socket",
            )
        if config.out_tls_ca_file is None and not system_ca_available():
            raise ConfigError(
                path,
                verify_line,
                verify_option,
                "verifying the next server needs CA certificates: there is no system CA "
                "store, set OutTLSCAFile (or OutTLSVerify: off)",
            )
    if verify and config.out_tls_ca_file is not None:  # its errors name OutTLSCAFile
        try:
            upstream_context(verify=True, ca_file=config.out_tls_ca_file)
        except TLSError as exc:
            line = lines.get("out_tls_ca_file")
            raise ConfigError(path, line, "OutTLSCAFile", str(exc)) from None
    try:
        return upstream_context(
            verify=verify,
            ca_file=config.out_tls_ca_file if verify else None,
            certificate=config.out_tls_certificate,
            key=config.out_tls_key,
        )
    except TLSError as exc:
        raise ConfigError(
            path, lines.get("out_tls_certificate"), "OutTLSCertificate", str(exc)
        ) from None
