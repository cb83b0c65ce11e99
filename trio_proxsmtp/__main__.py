"""`python -m trio_proxsmtp`: the same command line as proxsmtpd."""

import sys

from trio_proxsmtp.daemon.cli import main

sys.exit(main())
