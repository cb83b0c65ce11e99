"""The checks a configuration passes after its options are parsed, and the TLS contexts
built from it once per load (so that `-t` and SIGHUP catch unusable files): the filter's
program, TempDirectory, TLS towards clients (TLSCertificate/TLSKey, ListenTLS) and towards
the next server (OutTLS*).  An error is a `ConfigError` naming the file, the line and the
option; a warning is returned, never printed here.
"""

from __future__ import annotations

import os
import shutil
import ssl
import stat

from trio_proxsmtp.common.address import AddressKind
from trio_proxsmtp.common.tls import TLSError, server_context, system_ca_available, upstream_context
from trio_proxsmtp.config.model import Config, ConfigError
from trio_proxsmtp.relay.settings import OutTLSMode, TransparentMode
from trio_proxsmtp.stages.settings import FilterType, direct_argv

__all__ = [
    "check_filter_program",
    "check_listen_tls",
    "out_tls_context",
    "server_tls_context",
    "temp_directory_warnings",
]


def temp_directory_warnings(directory: str) -> list[str]:
    try:
        st = os.stat(directory)
    except OSError as exc:
        return [f"TempDirectory {directory!r} is not usable: {exc.strerror}"]
    if not stat.S_ISDIR(st.st_mode):
        return [f"TempDirectory {directory!r} is not a directory"]
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        return [
            f"TempDirectory {directory!r} is world-writable without the sticky bit: "
            "use a directory private to the proxy's user"
        ]
    return []


def check_filter_program(config: Config, line: int | None = None) -> list[str]:
    """Check that the FilterCommand's program exists and can be executed.

    A missing filter would otherwise refuse every message with the shell's "not found"
    (and show its path to outside senders), so it stops the daemon at start, at -t and on
    a reload. A command with shell syntax (or a shell builtin) runs under ``/bin/sh -c``:
    its program is not checked, and that is a warning. Raises ConfigError naming the file,
    the line and the reason; returns the warnings.
    """
    command = config.filter_command
    if command is None or config.filter_type is FilterType.REJECT:
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
