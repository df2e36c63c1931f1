"""BFD (RFC 5880): packet codec and the session state machine, driven with explicit time (no sockets)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgp.bfd import ADMIN_DOWN, DOWN, INIT, UP, Packet, Session, decode, encode


@given(
    st.sampled_from([ADMIN_DOWN, DOWN, INIT, UP]),
    st.integers(0, 31),
    st.integers(1, 255),
    st.integers(1, 2**32 - 1),
    st.integers(1, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.booleans(),
    st.booleans(),
)
def test_codec_round_trip(state: int, diag: int, mult: int, my: int, your: int, tx: int, rx: int,
                          poll: bool, final: bool) -> None:
    p = Packet(state, diag, mult, my, your, tx, rx, poll, final)
    assert len(encode(p)) == 24
    assert decode(encode(p)) == p


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda b: b[:20], "shorter"),
        (lambda b: bytes([0x40 | b[0] & 0x1F]) + b[1:], "version"),
        (lambda b: b[:2] + b"\x00" + b[3:], "multiplier"),
        (lambda b: b[:4] + b"\x00\x00\x00\x00" + b[8:], "my discriminator"),
        (lambda b: b[:1] + bytes([b[1] | 0x04]) + b[2:], "authentication"),
    ],
)
def test_invalid_packets_are_refused(mutate, why: str) -> None:  # type: ignore[no-untyped-def]
    good = encode(Packet(UP, 0, 3, 7, 9, 300_000, 300_000))
    with pytest.raises(ValueError, match=why):
        decode(mutate(good))
    with pytest.raises(ValueError, match="your discriminator 0"):
        decode(encode(Packet(UP, 0, 3, 7, 0)))


def peer_packet(state: int, your: int = 0, tx: int = 300_000, rx: int = 300_000, **kw: bool) -> Packet:
    return Packet(state, 0, 3, 4242, your, tx, rx, **kw)


def test_three_way_handshake_then_poll_to_fast_timers() -> None:
    s = Session("10.0.0.2", local_disc=99)
    assert s.packet().desired_min_tx == 1_000_000  # not Up: at least 1 s (RFC 5880 6.8.3)
    s.on_packet(peer_packet(DOWN), now=0.0)
    assert s.state == INIT and s.remote_disc == 4242
    s.on_packet(peer_packet(UP, your=99), now=0.1)
    assert s.state == UP and s.changes == [(INIT, 0), (UP, 0)]
    first = s.packet()
    assert first.poll and first.desired_min_tx == 300_000 and first.your_disc == 4242
    assert s.tx_interval() == 0.3  # faster at once: the peer times us out on what we advertise
    s.on_packet(peer_packet(UP, your=99, final=True), now=0.2)
    assert not s.polling and s.tx_interval() == 0.3
    assert s.detection_time() == pytest.approx(0.9)


def test_we_send_at_least_as_often_as_we_advertise_from_the_moment_we_are_up() -> None:
    """The peer's detection time is our detect multiplier x the DesiredMinTx in our packets (RFC 5880
    6.8.4). Sending at the slow-start pace (1 s, scheduled before the session came Up) while advertising
    300 ms had FRR declare every new session down 0.9 s after Up (diag 3 on our side), a flap."""
    s = Session("10.0.0.2", local_disc=99)
    s.on_packet(peer_packet(DOWN), now=0.0)
    s.next_tx = 0.05 + 0.95  # the runner sent at 0.05 and scheduled the next packet at the slow pace
    s.on_packet(peer_packet(UP, your=99), now=0.1)
    assert s.state == UP
    advertised = s.packet().desired_min_tx / 1e6
    assert s.tx_interval() <= advertised
    assert s.next_tx <= 0.1 + advertised
    s.on_packet(peer_packet(UP, your=99, final=True), now=0.12)  # the Poll answered: nothing slows down
    assert s.tx_interval() <= s.packet().desired_min_tx / 1e6 and s.next_tx <= 0.1 + advertised


def test_a_poll_from_the_peer_is_answered_with_final() -> None:
    s = Session("10.0.0.2", local_disc=99)
    s.on_packet(peer_packet(DOWN), now=0.0)
    s.on_packet(peer_packet(UP, your=99, poll=True), now=0.1)
    assert s.send_final
    reply = s.packet()
    assert reply.final and not reply.poll and not s.send_final


def test_detection_time_expiry_takes_the_session_down() -> None:
    s = up_session()
    s.check_timeout(now=1.0 + 0.89)
    assert s.state == UP
    assert s.last_detection is None
    s.check_timeout(now=1.0 + 0.95)  # handled 50 ms after the deadline (a loaded machine)
    assert s.state == DOWN and s.diag == 1 and s.remote_disc == 0
    # measured from the last packet received: what the failover benchmark reports as timer accuracy
    assert s.last_detection == {"measured_ms": 950.0, "configured_ms": 900.0, "late_ms": 50.0}


def up_session() -> Session:
    s = Session("10.0.0.2", local_disc=99)
    s.on_packet(peer_packet(DOWN), now=0.0)
    s.on_packet(peer_packet(UP, your=99), now=0.5)
    s.on_packet(peer_packet(UP, your=99, final=True), now=1.0)
    return s


def test_neighbor_down_or_admin_down() -> None:
    s = up_session()
    s.on_packet(peer_packet(DOWN, your=99), now=1.1)
    assert s.state == DOWN and s.diag == 3
    s = up_session()
    s.on_packet(peer_packet(ADMIN_DOWN, your=99), now=1.1)
    assert s.state == DOWN and s.diag == 3


def test_packets_for_another_discriminator_are_ignored() -> None:
    s = up_session()
    s.on_packet(peer_packet(DOWN, your=12345), now=1.1)
    assert s.state == UP


def test_jitter_stays_within_rfc_bounds() -> None:
    s = up_session()
    rng = random.Random(1)
    values = [s.jittered(rng) for _ in range(2000)]
    assert min(values) >= 0.3 * 0.75 and max(values) <= 0.3
    s.detect_mult = 1
    assert max(s.jittered(rng) for _ in range(2000)) <= 0.3 * 0.9
