"""speedproxy.master.control: the AMP commands between master and workers."""

from __future__ import annotations

from twisted.protocols import amp

from speedproxy.master.control import ApplyConfig, ReloadTLS


def round_trip(command: type, **arguments: object) -> dict:
    """Arguments → AMP box → wire bytes → box → arguments, as the two ends do."""
    box = command.makeArguments(arguments, amp.AMP())
    return command.parseArguments(_parse(amp.AmpBox(box).serialize()), amp.AMP())


def _parse(wire: bytes) -> amp.AmpBox:
    boxes = amp.parseString(wire)  # also checks every value fits AMP's 64 KiB
    assert len(boxes) == 1
    return boxes[0]


def test_a_config_larger_than_one_amp_value_is_split_and_rebuilt() -> None:
    # AMP values are limited to 64 KiB; a config with many backends is larger.
    backends = [{"id": f"b{i}", "host": "10.0.%d.%d" % (i // 250, i % 250), "port": 8000 + i} for i in range(3000)]
    config = {"backends": {"default": backends}, "text": "é" * 10}
    assert len(repr(config)) > 2 * 65535
    got = round_trip(ApplyConfig, config=config, version=7, stats_index={"routes": {"a": 0}, "backends": {}})
    assert got == {"config": config, "version": 7, "stats_index": {"routes": {"a": 0}, "backends": {}}}


def test_reload_tls_answers_with_the_certificate() -> None:
    answer = {"certificate": {"sha256": "AB:CD", "subject": "CN=x", "chain_length": 2}}
    box = ReloadTLS.makeResponse(answer, amp.AMP())
    assert ReloadTLS.parseResponse(_parse(amp.AmpBox(box).serialize()), amp.AMP()) == answer
