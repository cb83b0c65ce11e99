"""The sans-IO core: bytes and events in, actions and bytes out; no sockets, no Trio, no
processes, no clock.

Owns the SMTP wire (`smtp/`), the proxy's SMTP session (`session/`), the milter codec and our
side of a milter conversation (`milter`), message and header editing and the summary line
(`message/`), and the PROXY header (`proxy_header`).

May import: the standard library and attrs, and nothing else of ours (tests/test_layers.py).
"""
