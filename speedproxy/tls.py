"""The client-facing listener's TLS certificate, loaded from PEM files and
replaceable while serving (``POST /api/v1/config/reload-ssl``, SIGHUP)."""

from __future__ import annotations

import calendar
import datetime
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

log = Logger(namespace="speedproxy.tls")

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class TLSConfigError(ValueError):
    """The certificate or key cannot be used; the message names the file.

    :ivar field: the config key of the file at fault (``ssl.cert_file`` or
        ``ssl.key_file``; ``ssl`` when it is the pair that does not match).
    """

    def __init__(self, message: str, field: str = "ssl") -> None:
        super().__init__(message)
        self.field = field


class TLSNotEnabled(Exception):
    """There is no certificate to reload (see :func:`reload_refusal`)."""


def reload_refusal(listener_tls: bool, config_enabled: bool) -> Optional[str]:
    """Why a certificate reload cannot be done, or ``None`` when it can.

    ``ssl.enabled`` takes effect only at start: the listener keeps the TLS
    mode it was started with (``listener_tls``) whatever the running config
    says (``config_enabled``).
    """
    if listener_tls and config_enabled:
        return None
    if config_enabled:
        return "ssl.enabled is true, but the listener was started without TLS: restart speedproxy to serve TLS"
    if listener_tls:
        return ("ssl.enabled is false in the running config (the listener serves TLS "
                "until a restart): there is no certificate to reload")
    return "ssl.enabled is false: there is no certificate to reload"


@dataclass(frozen=True)
class LoadedCertificate:
    """A certificate chain and key read from their files, ready to serve."""

    #: ``twisted.internet.ssl.CertificateOptions`` for the listener.
    options: Any
    cert_file: str
    key_file: str
    #: The leaf certificate's subject, e.g. ``CN=example.com``.
    subject: str
    #: The leaf's expiry, ISO 8601 UTC.
    not_after: str
    #: SHA-256 fingerprint of the leaf (colon-separated hex, as openssl prints it).
    sha256: str
    #: Certificates in ``cert_file`` (leaf plus intermediates).
    chain_length: int
    #: The leaf's expiry as a Unix time (0 if it could not be read).
    not_after_epoch: float = 0.0

    def summary(self) -> Dict[str, Any]:
        """What an operator checks after a rotation (JSON-able)."""
        return {
            "cert_file": self.cert_file,
            "key_file": self.key_file,
            "subject": self.subject,
            "not_after": self.not_after,
            "sha256": self.sha256,
            "chain_length": self.chain_length,
        }


def load_certificate(cert_file: str, key_file: str) -> LoadedCertificate:
    """Read a PEM certificate (chain) and a PEM key and check they belong together.

    ``cert_file`` may hold the leaf followed by intermediates (a
    fullchain); RSA and EC keys both work.

    :raises TLSConfigError: naming the file and what is wrong with it.
    """
    from OpenSSL import crypto
    from twisted.internet.ssl import CertificateOptions

    try:
        with open(cert_file, "rb") as handle:
            cert_pem = handle.read()
    except OSError as error:
        raise TLSConfigError(f"ssl.cert_file {cert_file}: {error.strerror}", "ssl.cert_file") from error
    try:
        with open(key_file, "rb") as handle:
            key_pem = handle.read()
    except OSError as error:
        raise TLSConfigError(f"ssl.key_file {key_file}: {error.strerror}", "ssl.key_file") from error
    blocks: List[bytes] = _PEM_CERT.findall(cert_pem)
    if not blocks:
        raise TLSConfigError(f"ssl.cert_file {cert_file}: no PEM certificate found", "ssl.cert_file")
    try:
        certificates = [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]
    except crypto.Error as error:
        raise TLSConfigError(
            f"ssl.cert_file {cert_file}: invalid certificate ({error})", "ssl.cert_file"
        ) from error
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except crypto.Error as error:
        raise TLSConfigError(
            f"ssl.key_file {key_file}: invalid private key ({error})", "ssl.key_file"
        ) from error
    try:
        options = CertificateOptions(
            privateKey=key,
            certificate=certificates[0],
            extraCertChain=certificates[1:],
            # HTTP/2 first (speedproxy.proxy.http2), HTTP/1.1 for the rest.
            acceptableProtocols=[b"h2", b"http/1.1"],
        )
        options.getContext()  # built now: OpenSSL checks that key and certificate match
    except Exception as error:
        raise TLSConfigError(f"ssl.cert_file/key_file: {error}") from error
    leaf = certificates[0]
    subject = ",".join(
        "%s=%s" % (name.decode("ascii", "replace"), value.decode("utf-8", "replace"))
        for name, value in leaf.get_subject().get_components()
    )
    not_after = leaf.get_notAfter() or b""
    try:
        when = datetime.datetime.strptime(not_after.decode("ascii"), "%Y%m%d%H%M%SZ")
    except ValueError:
        expires, expires_epoch = not_after.decode("ascii", "replace"), 0.0
    else:
        expires = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        expires_epoch = float(calendar.timegm(when.utctimetuple()))
    return LoadedCertificate(
        options=options,
        cert_file=cert_file,
        key_file=key_file,
        subject=subject,
        not_after=expires,
        sha256=leaf.digest("sha256").decode("ascii"),
        chain_length=len(certificates),
        not_after_epoch=expires_epoch,
    )


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """The listener's certificate; :meth:`reload` swaps it while serving.

    ``TLSMemoryBIOFactory`` asks for a new OpenSSL connection for every
    accepted client, so a reload applies to every handshake after it;
    connections already open keep the certificate they were set up with.
    """

    def __init__(self, loaded: LoadedCertificate) -> None:
        self.current = loaded

    @classmethod
    def from_files(cls, cert_file: str, key_file: str) -> "ServerTLS":
        return cls(load_certificate(cert_file, key_file))

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Any:
        from OpenSSL.SSL import Connection

        return Connection(self.current.options.getContext(), None)

    def reload(self, cert_file: str, key_file: str) -> LoadedCertificate:
        """Read the files again and serve them from the next handshake on.

        :raises TLSConfigError: the files cannot be used; the certificate in
            use stays.
        """
        loaded = load_certificate(cert_file, key_file)
        self.current = loaded
        return loaded

    def serves(self, cert_file: str, key_file: str) -> bool:
        """Whether these are the files the current certificate came from."""
        return (self.current.cert_file, self.current.key_file) == (cert_file, key_file)

    def certificate_for(self, ssl: Any) -> Optional[LoadedCertificate]:
        """The certificate a config's ``ssl`` section asks for, when it names
        other files than the ones served (``None`` otherwise).

        Loaded, not served yet: the caller makes it :attr:`current` once the
        rest of the config is applied, so a refused config changes nothing.

        :raises TLSConfigError: those files cannot be used.
        """
        if not ssl.enabled or self.serves(ssl.cert_file, ssl.key_file):
            return None
        return load_certificate(ssl.cert_file, ssl.key_file)


def wrap_listener(tls: ServerTLS, factory: Any) -> Any:
    """The client-facing protocol factory behind TLS with ``tls``'s certificate."""
    from twisted.protocols.tls import TLSMemoryBIOFactory

    return TLSMemoryBIOFactory(tls, False, factory)


class TLSReloadIncomplete(Exception):
    """Some workers did not take the new certificate; the message says which."""


def log_certificate(result: Dict[str, Any]) -> Dict[str, Any]:
    """Log the certificate a reload made live (a ``reload_ssl`` result)."""
    log.info(
        "TLS certificate {subject} (sha256 {sha256}, expires {not_after}) from {cert_file} is live",
        **result["certificate"],
    )
    return result


def config_for_reload(path: str, serves_tls: bool) -> Any:
    """The config file as SIGHUP applies it, in either process model.

    :raises ConfigError: the file is invalid.
    :raises TLSConfigError: the listener serves TLS and the certificate
        files the file names cannot be used (like ``nginx -t``, an unusable
        certificate refuses the whole reload).
    """
    from speedproxy.config import load_config

    config = load_config(path)
    if config.ssl.enabled and serves_tls:
        load_certificate(config.ssl.cert_file, config.ssl.key_file)
    return config
