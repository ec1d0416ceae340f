"""TLS contexts for the client-facing listener."""

from __future__ import annotations

import re
from typing import Any, List

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class TLSConfigError(ValueError):
    """The certificate or key cannot be used; the message names the file."""


def server_tls_options(cert_file: str, key_file: str) -> Any:
    """Certificate options from a PEM certificate (chain) and a PEM key.

    ``cert_file`` may hold the leaf followed by intermediates (a
    fullchain); RSA and EC keys both work.
    """
    from OpenSSL import crypto
    from twisted.internet.ssl import CertificateOptions

    try:
        with open(cert_file, "rb") as handle:
            cert_pem = handle.read()
    except OSError as error:
        raise TLSConfigError(f"ssl.cert_file {cert_file}: {error.strerror}") from error
    try:
        with open(key_file, "rb") as handle:
            key_pem = handle.read()
    except OSError as error:
        raise TLSConfigError(f"ssl.key_file {key_file}: {error.strerror}") from error
    blocks: List[bytes] = _PEM_CERT.findall(cert_pem)
    if not blocks:
        raise TLSConfigError(f"ssl.cert_file {cert_file}: no PEM certificate found")
    try:
        certificates = [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]
    except crypto.Error as error:
        raise TLSConfigError(f"ssl.cert_file {cert_file}: invalid certificate ({error})") from error
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except crypto.Error as error:
        raise TLSConfigError(f"ssl.key_file {key_file}: invalid private key ({error})") from error
    try:
        return CertificateOptions(
            privateKey=key,
            certificate=certificates[0],
            extraCertChain=certificates[1:],
            acceptableProtocols=[b"http/1.1"],
        )
    except Exception as error:  # OpenSSL reports a key/cert mismatch here
        raise TLSConfigError(f"ssl.cert_file/key_file: {error}") from error
