#!/bin/sh
# A FilterType: file filter for trio_proxsmtp (or proxsmtpd): scan each message with ClamAV.
#
#   FilterType: file
#   FilterCommand: /usr/local/libexec/trio-proxsmtpd/clamav.sh
#
# The message is the file named by $EMAIL. clamdscan exits 0 when it is clean (exit 0:
# deliver), 1 when it found a virus (reject with 550 and the virus name), and 2 on errors
# (451: the sender retries later rather than mail passing unscanned).
# A missing clamdscan is a 451 too (fail closed), said on stderr for the proxy's log.
# Everything in the environment comes from the network: it is only ever quoted here.

if ! command -v clamdscan >/dev/null 2>&1; then
    echo "clamav.sh: clamdscan not found in PATH ($PATH): failing closed" >&2
    echo "451 4.3.0 Virus scanner unavailable, try again later" >&2
    exit 1
fi
out=$(clamdscan --no-summary --stdout --fdpass "$EMAIL" 2>&1)
case $? in
    0)  exit 0 ;;
    1)  virus=$(printf '%s\n' "$out" | sed -n 's/^.*: \(.*\) FOUND$/\1/p' | head -n 1)
        echo "550 5.7.1 Virus found: ${virus:-unknown}" >&2
        exit 1 ;;
    *)  printf 'clamav.sh: clamdscan failed: %s\n' "$out" | head -n 1 >&2
        echo "451 4.3.0 Virus scanner unavailable, try again later" >&2
        exit 1 ;;
esac
