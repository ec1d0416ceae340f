"""One process's link to Redis: a command connection and a subscriber, kept up.

Built on txredisapi's protocols (Twisted-native, no thread), with the
connection management done here so that it follows a Sentinel failover and
never makes a caller wait for a Redis that is gone:

- :meth:`RedisLink.call` runs one command.  While the link is down it fails
  at once with :class:`RedisDown` (callers fall back to what the host
  knows); a command that gets no answer within ``timeout`` fails the same
  way and drops the connection.
- The master's address is found again before every connection: the server
  of a ``redis://`` address, or what the Sentinels say (``SENTINEL
  get-master-addr-by-name``) for a ``sentinel://`` one.  A server that
  answers ``ROLE`` with anything but ``master``, or a write refused with
  ``READONLY`` (a demoted master), drops the connection: the next one goes
  to the new master.
- Reconnects are tried every ``retry`` seconds; every channel given to
  :meth:`subscribe` is subscribed again on each new subscriber connection.
- :attr:`up` and :meth:`on_change` tell whether Redis is usable now.

txredisapi imports the global reactor when imported, so it is imported
only when a link connects (never when the config is checked).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, fail, inlineCallbacks, maybeDeferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from speedproxy.cluster.address import RedisAddress

log = Logger(namespace="speedproxy.cluster")

#: Seconds between connection attempts while Redis is unreachable.
RETRY = 0.5
#: Error replies meaning this server cannot serve us now (a demoted master, a restart).
GONE = ("READONLY", "LOADING", "MASTERDOWN", "NOAUTH")


class RedisDown(Exception):
    """Redis cannot be used now (not connected, no answer in time, a demoted master)."""


def _protocol_classes() -> Tuple[Any, Any]:
    import txredisapi

    return txredisapi.RedisProtocol, txredisapi.SubscriberProtocol


class _Factory(Factory):
    """Hands one protocol to an endpoint, without a log line per connection
    (a link retries every half second while Redis is away), and is what
    txredisapi's protocol expects of its factory when AUTH or SELECT fail."""

    noisy = False
    #: txredisapi logs a failed AUTH/SELECT itself when true; the link reports it.
    isLazy = False

    def __init__(self, protocol: Any) -> None:
        self.protocol_instance = protocol
        self.error: Optional[str] = None

    def buildProtocol(self, addr: Any) -> Any:
        return self.protocol_instance

    def stopTrying(self) -> None:
        pass

    def connectionError(self, message: str) -> None:
        self.error = message


class RedisLink:
    """A reconnecting command connection and subscriber to ``address``."""

    def __init__(
        self,
        reactor: Any,
        address: RedisAddress,
        timeout: float = 1.0,
        retry: float = RETRY,
        name: str = "speedproxy",
        quiet: bool = False,
    ) -> None:
        self.reactor = reactor
        self.address = address
        self.timeout = timeout
        self.retry = retry
        #: CLIENT SETNAME of our connections (seen in ``CLIENT LIST``).
        self.name = name
        #: Log no state change (a worker's link: the node's master logs them, once per node).
        self.quiet = quiet
        self.up = False
        self.running = False
        self._commands: Any = None
        self._subscriber: Any = None
        self._channels: Dict[str, Callable[[bytes], None]] = {}
        self._listeners: List[Callable[[bool], None]] = []
        self._connecting: Optional[Deferred] = None
        self._retry_call: Any = None
        #: ``host:port`` of the server in use (for the admin API).
        self.server = ""
        #: The reason Redis was last found unusable.
        self.last_error = ""

    # -- state ---------------------------------------------------------------------

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(up)`` whenever the link goes up or down."""
        self._listeners.append(listener)

    def _set_up(self, up: bool, why: str = "") -> None:
        if why:
            self.last_error = why
        if up == self.up:
            return
        self.up = up
        if self.quiet:
            pass
        elif up:
            log.info("redis {address}: connected to {server}", address=self.address.describe(), server=self.server)
        else:
            log.warn(
                "redis {address}: unreachable ({why}); limits and sessions fall back to this host's own",
                address=self.address.describe(), why=why or "lost",
            )
        for listener in list(self._listeners):
            try:
                listener(up)
            except Exception:
                log.failure("redis state listener failed")

    # -- life ----------------------------------------------------------------------

    def start(self) -> Deferred:
        """Start connecting; fires once the first attempt is over (up or not)."""
        self.running = True
        return self._connect()

    def stop(self) -> None:
        self.running = False
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        for connection in (self._commands, self._subscriber):
            if connection is not None and connection.transport is not None:
                connection.transport.loseConnection()
        self._commands = self._subscriber = None
        self._set_up(False, "stopped")

    def _schedule(self) -> None:
        if self.running and (self._retry_call is None or not self._retry_call.active()) and self._connecting is None:
            self._retry_call = self.reactor.callLater(self.retry, self._connect)

    def _connect(self) -> Deferred:
        if self._connecting is not None:
            return self._connecting
        self._connecting = attempt = self._attempt()

        def over(result: Any) -> None:
            self._connecting = None
            if result is not True:
                why = result.getErrorMessage() if hasattr(result, "getErrorMessage") else str(result)
                self._drop(why or "connection failed")

        return attempt.addBoth(over)

    @inlineCallbacks
    def _attempt(self) -> Any:
        host, port = yield self._master_address()
        opened: List[Any] = []
        try:
            commands = yield self._open(host, port, subscriber=False)
            opened.append(commands)
            role = yield self._with_timeout(commands.execute_command("ROLE"))
            if not role or role[0] not in ("master", b"master"):
                raise RedisDown(f"{host}:{port} is not a master (role {role[0] if role else '?'})")
            yield self._with_timeout(commands.execute_command("CLIENT", "SETNAME", self.name))
            subscriber = yield self._open(host, port, subscriber=True)
            opened.append(subscriber)
            channels = list(self._channels)
            if channels:
                yield self._with_timeout(subscriber.subscribe(channels))
        except BaseException:
            for connection in opened:
                connection.transport.abortConnection()
            raise
        if not self.running:
            for connection in opened:
                connection.transport.loseConnection()
            return False
        self._commands, self._subscriber = commands, subscriber
        self.server = f"{host}:{port}"
        for connection in opened:
            connection.whenDisconnected().addCallback(self._lost)
        late = [channel for channel in self._channels if channel not in channels]
        if late:  # subscribed to while this connection was being made
            subscriber.subscribe(late).addErrback(lambda failure: self._drop(failure.getErrorMessage()))
        self._set_up(True)
        return True

    def _with_timeout(self, call: Any) -> Deferred:
        deferred = maybeDeferred(lambda: call) if not isinstance(call, Deferred) else call
        return deferred.addTimeout(self.timeout, self.reactor)

    @inlineCallbacks
    def _master_address(self) -> Any:
        if not self.address.sentinel:
            return self.address.hosts[0]
        errors = []
        for host, port in self.address.hosts:
            try:
                sentinel = yield self._open(host, port, subscriber=False, sentinel=True)
            except Exception as error:
                errors.append(f"sentinel {host}:{port}: {error}")
                continue
            try:
                answer = yield self._with_timeout(
                    sentinel.execute_command("SENTINEL", "get-master-addr-by-name", self.address.service)
                )
            except Exception as error:
                errors.append(f"sentinel {host}:{port}: {error}")
                continue
            finally:
                sentinel.transport.loseConnection()
            if answer and len(answer) == 2:
                return _text(answer[0]), int(answer[1])
            errors.append(f"sentinel {host}:{port} knows no service {self.address.service!r}")
        raise RedisDown("; ".join(errors) or "no Sentinel")

    def _open(self, host: str, port: int, subscriber: bool, sentinel: bool = False) -> Deferred:
        from twisted.internet.endpoints import HostnameEndpoint

        plain, subscribing = _protocol_classes()
        link = self
        base = subscribing if subscriber else plain
        channels = self._channels

        class Protocol(base):  # type: ignore[misc,valid-type]
            callLater = link.reactor.callLater

            def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
                handler = channels.get(_text(channel))
                if handler is not None:
                    try:
                        handler(message if isinstance(message, bytes) else str(message).encode("utf-8"))
                    except Exception:
                        log.failure("redis message handler failed")

        kwargs: Dict[str, Any] = {"charset": None, "convertNumbers": False, "replyTimeout": None}
        if not sentinel:
            kwargs.update(password=self.address.password, username=self.address.username)
            if not subscriber:
                kwargs["dbid"] = self.address.db
        protocol = Protocol(**kwargs)
        factory = protocol.factory = _Factory(protocol)
        endpoint = HostnameEndpoint(self.reactor, host, port, timeout=max(self.timeout, 0.1))
        connected = endpoint.connect(factory).addCallback(lambda _: protocol.whenConnected())

        def ready(result: Any) -> Any:
            if factory.error:
                raise RedisDown(factory.error)
            return result

        def failed(failure: Any) -> Any:
            if protocol.transport is not None:  # connected, but AUTH/SELECT failed or took too long
                protocol.transport.abortConnection()
            return failure

        return connected.addCallback(ready).addTimeout(self.timeout * 2, self.reactor).addErrback(failed)

    def _lost(self, connection: Any) -> None:
        if connection is self._commands or connection is self._subscriber:
            self._drop("connection lost")

    def _drop(self, why: str) -> None:
        """Close both connections, mark the link down, and try again soon."""
        commands, subscriber = self._commands, self._subscriber
        self._commands = self._subscriber = None
        for connection in (commands, subscriber):
            if connection is not None and connection.transport is not None:
                connection.transport.abortConnection()
        self._set_up(False, why)
        self._schedule()

    # -- use -----------------------------------------------------------------------

    def call(self, *args: Any) -> Deferred:
        """Run one command; fails with :class:`RedisDown` when Redis is not usable."""
        commands = self._commands
        if commands is None or not self.up:
            return fail(RedisDown(self.last_error or "not connected"))
        try:
            sent = commands.execute_command(*args)
        except Exception as error:
            self._drop(str(error))
            return fail(RedisDown(str(error)))
        return self._checked(sent)

    def _checked(self, sent: Deferred) -> Deferred:
        import txredisapi

        def failed(failure: Any) -> Any:
            if failure.check(RedisDown):
                return failure
            message = failure.getErrorMessage() or type(failure.value).__name__
            if failure.check(txredisapi.ResponseError) and not message.startswith(GONE):
                return failure  # the command's own error: Redis is there
            self._drop(message)
            raise RedisDown(message)

        return sent.addTimeout(self.timeout, self.reactor).addErrback(failed)

    def publish(self, channel: str, message: bytes) -> Deferred:
        """``PUBLISH``; fires with the number of subscribers that got it."""
        return self.call("PUBLISH", channel, message)

    def subscribe(self, channel: str, handler: Callable[[bytes], None]) -> None:
        """Call ``handler(message)`` for every message on ``channel`` (resubscribed on reconnect)."""
        self._channels[channel] = handler
        if self._subscriber is not None and self.up:
            self._subscriber.subscribe([channel]).addErrback(lambda failure: self._drop(failure.getErrorMessage()))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
