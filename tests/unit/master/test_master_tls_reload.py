"""Certificate reloads in the master (:mod:`speedproxy.master.tls_reload`): checked first, taken by every worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

import pytest
import trustme
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from master_unit_support import CONFIG, control_of, two_worker_master
from speedproxy.master.control import ApplyConfig, ReloadTLS
from speedproxy.master.service import MasterService
from speedproxy.master.tls_reload import TLSReload
from speedproxy.tls import TLSConfigError, TLSNotEnabled, TLSReloadIncomplete, load_certificate

# pyOpenSSL deprecates the X509/PKey objects Twisted's CertificateOptions takes.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """``server.crt`` and ``server.key`` in a directory."""
    issued = trustme.CA().issue_cert("localhost")
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "server.crt"))
    issued.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    return tmp_path


@pytest.fixture
def master(files: Path) -> MasterService:
    ssl = f"ssl: {{enabled: true, cert_file: '{files / 'server.crt'}', key_file: '{files / 'server.key'}'}}\n"
    return two_worker_master(CONFIG + ssl)


def _sha256(files: Path) -> str:
    return load_certificate(str(files / "server.crt"), str(files / "server.key")).sha256


def _outcome(master: MasterService) -> List[Any]:
    results: List[Any] = []
    master.reload_ssl().addBoth(results.append)
    return results


def test_the_master_composes_it(master) -> None:
    assert isinstance(master.tls_reload, TLSReload)


def test_every_worker_takes_the_files_certificate(master, files) -> None:
    sha256 = _sha256(files)
    results = _outcome(master)
    for slot in (0, 1):
        (_, answer), = control_of(master, slot).pending(ReloadTLS)
        answer.callback({"certificate": {"sha256": sha256}})
    (result,) = results
    assert result["reloaded"] is True and result["workers"] == 2 and result["certificate"]["sha256"] == sha256
    assert "starting" not in result
    assert master.certificate is not None and master.certificate.sha256 == sha256


def test_a_worker_with_another_certificate_makes_it_incomplete(master, files) -> None:
    results = _outcome(master)
    (_, d0), = control_of(master, 0).pending(ReloadTLS)
    (_, d1), = control_of(master, 1).pending(ReloadTLS)
    d0.callback({"certificate": {"sha256": _sha256(files)}})
    d1.callback({"certificate": {"sha256": "AA:BB"}})
    (failure,) = results
    assert isinstance(failure, Failure) and failure.check(TLSReloadIncomplete)
    assert "1 of 2 workers" in failure.getErrorMessage() and "worker 1 loaded AA:BB" in failure.getErrorMessage()
    assert master.certificate is None


def test_starting_and_lost_workers_read_the_files_when_they_start(master, files) -> None:
    results = _outcome(master)
    (_, d0), = control_of(master, 0).pending(ReloadTLS)
    (_, d1), = control_of(master, 1).pending(ReloadTLS)
    d0.callback({"certificate": {"pending": True}})
    d1.errback(ConnectionLost())
    (result,) = results
    assert result["workers"] == 0 and result["starting"] == [0, 1]


def test_unusable_files_change_nothing(master, files) -> None:
    (files / "server.key").write_text("not a key")
    (failure,) = _outcome(master)
    assert failure.check(TLSConfigError) and "ssl.key_file" in failure.getErrorMessage()
    assert not control_of(master, 0).calls and not control_of(master, 1).calls


def test_without_tls_there_is_nothing_to_reload() -> None:
    master = two_worker_master()
    (failure,) = _outcome(master)
    assert failure.check(TLSNotEnabled)
    assert not control_of(master, 0).calls


def test_a_reload_waits_for_the_config_change_in_flight(master, files) -> None:
    master.update_config(lambda config: config)
    results = _outcome(master)
    assert not control_of(master, 0).pending(ReloadTLS)  # the change holds the lock
    for slot in (0, 1):
        (arguments, answer), = control_of(master, slot).pending(ApplyConfig)
        answer.callback({"version": arguments["version"]})
    for slot in (0, 1):
        (_, answer), = control_of(master, slot).pending(ReloadTLS)
        answer.callback({"certificate": {"sha256": _sha256(files)}})
    assert results[0]["reloaded"] is True
