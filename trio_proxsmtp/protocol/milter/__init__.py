"""The milter protocol (Sendmail/Postfix mail filters, version 6), sans-IO: its codes and
flags (`codes`), the answers a milter gives (`messages`), the packet codec for both sides
(`codec`: the client uses the MTA side, the fake milter in ``trio_proxsmtp.testing`` the
other), and our side's conversation state (`session`: `MilterSession`).

May import: the standard library, attrs and trio_proxsmtp.protocol.
"""
