"""Fake SMTP peers for testing the proxy and your own filters.

- :class:`FakeUpstream`: a scriptable SMTP server that records every byte and transaction;
- :class:`FakeClient` / :func:`open_client`: a scripted, byte-exact SMTP client;
- :class:`FakeMilter`: a scriptable milter (Sendmail/Postfix mail filter protocol) that
  records every stage and answers per a script;
- :class:`FakePolicy`: a Postfix policy service (PolicyService) that records every request
  and answers as told;

- :class:`FakeSpamd`, :class:`FakeClamd`: a scriptable spamd and clamd for ``Scanners:``
  (``FakeUpstream`` is the SMTP filter server of ``FilterType: smtp``);
- :func:`run_proxy`: the proxy in-process on an ephemeral port (see its module docstring
  for a complete pytest-trio example);
- ``python -m trio_proxsmtp.testing sink``: a FakeUpstream that prints what it receives;
- :func:`make_test_certificates`: a throwaway CA with a server and a client certificate
  (with the ``openssl`` command), for the TLS of both fakes.

Nothing here imports pytest: the fakes work under any Trio test runner.
"""

from trio_proxsmtp.testing.certs import OpenSSLMissing, TestCertificates, make_test_certificates
from trio_proxsmtp.testing.client import FakeClient, dot_stuff, open_client
from trio_proxsmtp.testing.fake_milter import FakeMilter, FakeMilterSession
from trio_proxsmtp.testing.fake_policy import FakePolicy
from trio_proxsmtp.testing.fake_scanners import FakeClamd, FakeSpamd
from trio_proxsmtp.testing.proxy import RunningProxy, run_proxy
from trio_proxsmtp.testing.upstream import (
    BANNER,
    CLOSE,
    DEFAULT_EHLO_KEYWORDS,
    END_OF_DATA,
    RESET,
    ClosePoint,
    FakeUpstream,
    Hangup,
    Responder,
    Session,
    TLSInfo,
    Transaction,
)

__all__ = [
    "BANNER",
    "CLOSE",
    "DEFAULT_EHLO_KEYWORDS",
    "END_OF_DATA",
    "RESET",
    "ClosePoint",
    "FakeClamd",
    "FakeClient",
    "FakeMilter",
    "FakeMilterSession",
    "FakePolicy",
    "FakeSpamd",
    "FakeUpstream",
    "Hangup",
    "OpenSSLMissing",
    "Responder",
    "RunningProxy",
    "Session",
    "TLSInfo",
    "TestCertificates",
    "Transaction",
    "dot_stuff",
    "make_test_certificates",
    "open_client",
    "run_proxy",
]
