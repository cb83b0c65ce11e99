"""The proxsmtpd command line: `-d LEVEL -f FILE -p PIDFILE -v`, plus `-h` and `-t`.

Here: parse the arguments, load the config, set up logging, look the User up; then
startup.py binds, detaches, writes the pid file, switches User and serves (service.py), in
that order (fixing B16/B17, so that every failure reaches the invoking shell).  Exit status:
0 normal, 1 a start-up failure (bind, pid file, user), 2 a usage or config error.
"""

from __future__ import annotations

import getopt
import logging
import os
import sys

from trio_proxsmtp import __version__, compiled_core
from trio_proxsmtp.common.log import LOGGER_NAME, LoggingUnavailable, setup_logging
from trio_proxsmtp.config.loader import load_config_with_warnings
from trio_proxsmtp.config.model import ConfigError
from trio_proxsmtp.daemon import startup
from trio_proxsmtp.daemon.privileges import PrivilegeError, lookup_user
from trio_proxsmtp.daemon.startup import PROG, print_error

__all__ = ["DEFAULT_CONFIG", "USAGE", "main"]

DEFAULT_CONFIG = "/etc/proxsmtpd.conf"
USAGE = f"""\
usage: {PROG} [-d level] [-f configfile] [-p pidfile] [-t]
       {PROG} -v | -h
  -d LEVEL   stay in the foreground and log to stderr; LEVEL 0 (errors) .. 4 (protocol trace)
  -f FILE    configuration file (default {DEFAULT_CONFIG})
  -p FILE    write the daemon's pid to FILE (PidFile in the config overrides it)
  -t         check the configuration and exit (0: OK, 2: error)
  -v         print the version, the configuration path and the core (compiled or not)
  -h, --help print this help
"""

log = logging.getLogger(LOGGER_NAME)


def _parse_debug_level(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 <= int(text) <= 4:
        raise ValueError("invalid debug log level (must be between 0 and 4)")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    """Run proxsmtpd; returns the process exit status."""
    args = sys.argv[1:] if argv is None else argv
    try:
        opts, rest = getopt.getopt(args, "d:f:p:vht", ["help"])
    except getopt.GetoptError as exc:
        print_error(str(exc))
        sys.stderr.write(USAGE)
        return 2
    if rest:
        print_error(f"unexpected argument: {rest[0]}")
        sys.stderr.write(USAGE)
        return 2

    debug_level: int | None = None
    config_path = DEFAULT_CONFIG
    cli_pid_file: str | None = None
    show_version = show_help = check_only = False
    for flag, value in opts:
        if flag == "-d":
            try:
                debug_level = _parse_debug_level(value)
            except ValueError as exc:
                print_error(str(exc))
                return 2
        elif flag == "-f":
            config_path = value
        elif flag == "-p":
            cli_pid_file = value
        elif flag == "-v":
            show_version = True
        elif flag == "-t":
            check_only = True
        else:
            show_help = True

    if show_help:
        sys.stdout.write(USAGE)
        return 0
    if show_version:
        print(f"trio_proxsmtp (version {__version__}) - proxsmtpd 1.10 compatible")
        print(f"          (config: {config_path})")
        print(f"          (core: {compiled_core.describe()})")
        return 0
    daemonize = debug_level is None and not check_only
    if daemonize:
        # The daemon changes directory to /: a relative -f would make SIGHUP read another
        # file (or none), a relative -p would write /NAME.
        config_path = os.path.abspath(config_path)
        if cli_pid_file is not None:
            cli_pid_file = os.path.abspath(cli_pid_file)

    try:
        config, warnings = load_config_with_warnings(config_path)
        user = lookup_user(config.user) if config.user is not None else None
    except ConfigError as exc:
        print_error(str(exc))
        return 2
    except PrivilegeError as exc:
        line = config.option_lines.get("user")  # the setting in force
        print_error(str(ConfigError(config_path, line, "User", str(exc))))
        return 2 if check_only else 1
    if check_only:
        for warning in warnings:
            print_error(f"warning: {warning}")
        print(f"config OK: {config_path}")
        return 0

    pid_file = cli_pid_file
    if config.pid_file is not None:
        if cli_pid_file is not None:
            warnings.append("ignoring pid file specified on the command line")
        pid_file = config.pid_file or None
    if daemonize and pid_file is not None:
        pid_file = os.path.abspath(pid_file)

    try:
        setup_logging(debug_level, log_format=config.log_format)
    except LoggingUnavailable as exc:
        print_error(str(exc))
        return 1
    log.debug("read config file: %s", config_path)
    for warning in warnings:
        log.warning("%s", warning)
    return startup.start(config, user, pid_file, daemonize, config_path)
