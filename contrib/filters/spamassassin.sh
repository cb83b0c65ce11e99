#!/bin/sh
# A FilterType: pipe filter for trio_proxsmtp (or proxsmtpd): SpamAssassin through spamd.
#
#   FilterCommand: /usr/local/libexec/trio-proxsmtpd/spamassassin.sh
#
# Messages scoring at or above REJECT_SCORE (default 10) are refused with 550; the others
# are delivered with SpamAssassin's X-Spam-* headers added. If spamd cannot be reached the
# message is delivered unchanged; set SPAM_FAIL_CLOSED=1 to answer 451 instead (the sender
# retries later). A missing spamc is always a 451 (fail closed: an installation error
# must not pass every message unscanned), said on stderr for the proxy's log.
# Everything in the environment comes from the network: quote it.

if ! command -v spamc >/dev/null 2>&1; then
    echo "spamassassin.sh: spamc not found in PATH ($PATH): failing closed" >&2
    echo "451 4.3.0 Spam filter unavailable, try again later" >&2
    exit 1
fi

reject_score=${REJECT_SCORE:-10}
dir=$(mktemp -d "${TMPDIR:-/tmp}/spam.XXXXXX") || { echo "451 4.3.0 Local error" >&2; exit 1; }
trap 'rm -rf "$dir"' EXIT
cat >"$dir/in" || { echo "451 4.3.0 Local error" >&2; exit 1; }

# -x: no silent fallback, so a spamd failure is an exit status we can act on.
spamc -x <"$dir/in" >"$dir/out"
status=$?
if [ $status -ne 0 ]; then
    echo "spamassassin.sh: spamc exited with $status (spamd unreachable?)" >&2
    if [ "${SPAM_FAIL_CLOSED:-0}" = 1 ]; then
        echo "451 4.3.0 Spam filter unavailable, try again later" >&2
        exit 1
    fi
    cat "$dir/in"
    exit $?
fi
score=$(sed -n 's/^X-Spam-Status: [A-Za-z]*, score=\(-\{0,1\}[0-9.]*\).*/\1/p' "$dir/out" | head -n 1)
if [ -n "$score" ] && awk -v s="$score" -v r="$reject_score" 'BEGIN { exit !(s >= r) }'; then
    echo "550 5.7.1 Message rejected as spam (score $score)" >&2
    exit 1
fi
cat "$dir/out"  # not exec: the EXIT trap must still remove $dir
