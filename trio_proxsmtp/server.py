"""Listeners, the connection limit, signals and graceful drain (owned by the lead).

CONTRACT used by cli.py and testing/:

    def bind_listeners(config: Config) -> list[socket.socket]
        Synchronous; called before trio.run and before detaching so that bind errors reach
        the invoking shell. Raises OSError (with the address in its message) on failure.

    async def serve(config: Config, sockets: list[socket.socket], *,
                    reload: Callable[[], Config] | None = None,
                    task_status=trio.TASK_STATUS_IGNORED) -> None
        Serves until SIGTERM/SIGINT (graceful drain, then returns) or cancellation.
        task_status.started(list of bound sockaddrs/paths) once accepting.
"""
