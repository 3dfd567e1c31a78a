"""TCP tracking playbooks: each step is a segment, the result tcp_update must give, and the state after.

Client 198.51.100.10:40000 (ISN 1000 unless said), server 203.0.113.10:80 (ISN 5000). A result of
None means "valid"; a step whose result is a reason must leave the whole track unchanged.
"""

from __future__ import annotations

import gc
import json
import sys
import tracemalloc

from fw.conntrack import tcp
from fw.conntrack.table import Session
from fw.packet import parse
from tests.packets import seg

C, S = "198.51.100.10:40000", "203.0.113.10:80"
OK, OOW, INVALID, REOPEN = None, "invalid:out-of-window", "invalid:state", tcp.REOPEN


def pkt(src: str, flags: str, seq: int, ack: int = 0, **options):
    return parse(seg(src, S if src == C else C, flags, seq=seq, ack=ack, **options))


def play(steps, track=None) -> tcp.TcpTrack:
    """steps: (src, flags, seq, ack, options, expected result, expected state name)."""
    for number, (src, flags, seq, ack, options, result, state) in enumerate(steps):
        packet = pkt(src, flags, seq, ack, **options)
        if track is None:
            track = tcp.tcp_new(packet)
            assert isinstance(track, tcp.TcpTrack), f"step {number}: {track}"
            got = None
        else:
            before = tcp.to_dict(track)
            got = tcp.tcp_update(track, packet, src == C)
            if got is not None:
                assert tcp.to_dict(track) == before, f"step {number}: {got} changed the track"
        assert (got, track.state.name) == (result, state), f"step {number}: {flags} seq={seq} ack={ack}"
    return track


def handshake(client_isn=1000, server_isn=5000, client_opts=None, server_opts=None):
    c, s = client_isn, server_isn
    return [
        (C, "S", c, 0, client_opts or {}, OK, "SYN_SENT"),
        (S, "SA", s, c + 1, server_opts or {}, OK, "SYN_RECV"),
        (C, "A", c + 1, s + 1, {}, OK, "ESTABLISHED"),
    ]


def test_handshake_data_and_retransmission():
    track = play(handshake() + [
        (C, "PA", 1001, 5001, {"payload": b"x" * 100}, OK, "ESTABLISHED"),
        (C, "PA", 1001, 5001, {"payload": b"x" * 100}, OK, "ESTABLISHED"),  # retransmitted: accepted
        (S, "PA", 5001, 1101, {"payload": b"y" * 50}, OK, "ESTABLISHED"),
        (C, "A", 1101, 5051, {}, OK, "ESTABLISHED"),
    ])  # fmt: skip
    assert (track.seen[0].td_end, track.seen[1].td_end) == (1101, 5051)
    assert tcp.timeout_key(track) == "tcp_established"


def test_unacknowledged_data_and_repeated_retransmissions_shorten_the_timeout():
    track = play(handshake() + [(C, "PA", 1001, 5001, {"payload": b"x" * 10}, OK, "ESTABLISHED")])
    assert tcp.timeout_key(track) == "tcp_unacknowledged"  # data in flight
    play([(S, "A", 5001, 1011, {}, OK, "ESTABLISHED")], track)
    assert tcp.timeout_key(track) == "tcp_established"
    for _ in range(3):  # the same ACK again and again: the kernel counts retransmissions
        play([(S, "A", 5001, 1011, {}, OK, "ESTABLISHED")], track)
    assert track.retrans == 3 and tcp.timeout_key(track) == "tcp_unacknowledged"
    # Not when the state's own timeout is shorter anyway (a policy with tcp_established: 60).
    assert tcp.timeout_key(track, dict(tcp.DEFAULT_TIMEOUTS, tcp_established=60)) == "tcp_established"


def test_out_of_window_segments_are_invalid_and_change_nothing():
    play(handshake() + [
        (C, "PA", 1001 + 70_000, 5001, {"payload": b"x"}, OOW, "ESTABLISHED"),  # I: past the window
        (C, "PA", 1001 - 70_000, 5001, {"payload": b"x"}, OOW, "ESTABLISHED"),  # II: acked long ago
        (C, "A", 1001, 5001 + 10, {}, OOW, "ESTABLISHED"),  # III: acks data never sent
        (C, "A", 1001, 5001 - 70_000, {}, OOW, "ESTABLISHED"),  # IV: an ACK from long ago
        (C, "FA", 1001 + 70_000, 5001, {}, OOW, "ESTABLISHED"),  # an out-of-window FIN closes nothing
        (C, "PA", 1001 + 65_000, 5001, {"payload": b"x"}, OK, "ESTABLISHED"),  # in window (65535)
    ])  # fmt: skip


def test_window_scaling_needs_both_sides():
    scaled = {"wscale": 7}
    far = 1001 + 1_000_000  # beyond 65535, within 65535 << 7
    play(handshake(client_opts=scaled, server_opts=scaled) + [
        (S, "A", 5001, 1001, {}, OK, "ESTABLISHED"),  # the server's scaled window opens the client's
        (C, "PA", far, 5001, {"payload": b"x"}, OK, "ESTABLISHED"),
    ])  # fmt: skip
    track = play(handshake(client_opts=scaled) + [
        (S, "A", 5001, 1001, {}, OK, "ESTABLISHED"),
        (C, "PA", far, 5001, {"payload": b"x"}, OOW, "ESTABLISHED"),  # the server did not offer it
    ])  # fmt: skip
    assert (track.seen[0].td_scale, track.seen[1].td_scale) == (0, 0)


def test_sack_blocks_raise_the_ack_considered():
    perm = {"sack_perm": True}
    steps = handshake(client_opts=perm, server_opts=perm) + [
        (C, "PA", 1001, 5001, {"payload": b"a" * 1000}, OK, "ESTABLISHED"),
        (C, "PA", 2001, 5001, {"payload": b"b" * 1000}, OK, "ESTABLISHED"),
        # The first segment was lost beyond us: the server SACKs the second one.
        (S, "A", 5001, 1001, {"sack": ((2001, 3001),)}, OK, "ESTABLISHED"),
        # A SACK edge beyond anything the client sent fails check III like an ACK would.
        (S, "A", 5001, 1001, {"sack": ((2001, 3002),)}, OOW, "ESTABLISHED"),
    ]
    track = play(steps)
    assert track.seen[0].td_maxend == 3001 + 65535  # right edge from the SACK, not from the ACK
    # Without SACK permitted, SACK blocks are not looked at.
    play(handshake() + [
        (C, "PA", 1001, 5001, {"payload": b"a" * 1000}, OK, "ESTABLISHED"),
        (S, "A", 5001, 1001, {"sack": ((2001, 9999),)}, OK, "ESTABLISHED"),
    ])  # fmt: skip


def test_simultaneous_open_through_syn_sent2():
    play([
        (C, "S", 1000, 0, {}, OK, "SYN_SENT"),
        (S, "S", 5000, 0, {}, OK, "SYN_SENT2"),
        (C, "SA", 1000, 5001, {}, OK, "SYN_RECV"),
        (S, "SA", 5000, 1001, {}, OK, "SYN_RECV"),  # sIG: the table cannot place it, let it through
        (S, "A", 5001, 1001, {}, OK, "ESTABLISHED"),  # the switch knows it is a simultaneous open
        (C, "A", 1001, 5001, {}, OK, "ESTABLISHED"),
    ])  # fmt: skip


def test_fin_teardown_to_time_wait():
    track = play(handshake() + [
        (C, "FA", 1001, 5001, {}, OK, "FIN_WAIT"),
        (S, "A", 5001, 1002, {}, OK, "CLOSE_WAIT"),
        (S, "FA", 5001, 1002, {}, OK, "LAST_ACK"),
        (C, "A", 1002, 5002, {}, OK, "TIME_WAIT"),
        (C, "A", 1002, 5002, {}, OK, "TIME_WAIT"),  # retransmitted last ACK
    ])  # fmt: skip
    assert track.seen[0].flags & tcp.CLOSE_INIT and not track.seen[1].flags & tcp.CLOSE_INIT
    assert tcp.timeout_key(track) == "tcp_time_wait"


def test_reopen_from_time_wait_by_a_new_syn_from_either_end():
    teardown = [
        (C, "FA", 1001, 5001, {}, OK, "FIN_WAIT"),
        (S, "FA", 5001, 1002, {}, OK, "LAST_ACK"),
        (C, "A", 1002, 5002, {}, OK, "TIME_WAIT"),
    ]
    play(handshake() + teardown + [(C, "S", 90_000, 0, {}, REOPEN, "TIME_WAIT")])
    # RFC 9293 3.10.7.4 lets either end reopen; the server then becomes the client.
    play(handshake() + teardown + [(S, "S", 90_000, 0, {}, REOPEN, "TIME_WAIT")])


def test_syn_after_a_reset_from_the_same_end_reopens():
    play(handshake() + [
        (C, "R", 1001, 0, {}, OK, "CLOSE"),
        (C, "S", 7000, 0, {}, REOPEN, "CLOSE"),
    ])  # fmt: skip


def test_syn_into_a_connection_we_think_open_gets_us_back_in_sync():
    """Both ends forgot the connection, we did not: the kernel's ignored SYN and SYN/ACK (case b)."""
    track = play(handshake() + [
        (C, "S", 9000, 0, {"wscale": 2}, OK, "ESTABLISHED"),  # ignored, annotated
        (S, "SA", 20000, 9002, {}, OK, "ESTABLISHED"),  # does not answer that SYN: ignored too
        (C, "S", 9000, 0, {"wscale": 2}, OK, "ESTABLISHED"),  # the SYN again (that SA replaced it)
        (S, "SA", 20000, 9001, {"wscale": 3}, OK, "SYN_RECV"),  # answers it: in sync again
        (C, "A", 9001, 20001, {}, OK, "ESTABLISHED"),
    ])  # fmt: skip
    assert (track.seen[0].td_end, track.seen[1].td_end) == (9001, 20001)
    assert (track.seen[0].td_scale, track.seen[1].td_scale) == (2, 3)


def test_rst_answering_an_ignored_syn_closes():
    play(handshake() + [
        (C, "S", 9000, 0, {}, OK, "ESTABLISHED"),
        (S, "RA", 0, 9001, {}, OK, "CLOSE"),  # the server has no such connection
    ])  # fmt: skip


def test_rst_rfc5961_exact_inexact_and_out_of_window():
    track = play(handshake() + [
        (C, "PA", 1001, 5001, {"payload": b"x" * 100}, OK, "ESTABLISHED"),
        (S, "A", 5001, 1101, {}, OK, "ESTABLISHED"),
        (S, "R", 5001 + 70_000, 0, {}, OOW, "ESTABLISHED"),  # beyond the client's window
        (S, "R", 5001 - 1, 0, {}, OOW, "ESTABLISHED"),  # before what the client acknowledged
        (C, "R", 1101 + 500, 0, {}, OK, "ESTABLISHED"),  # in window, inexact: challenge ACK, kept
        (S, "R", 5001 + 10, 0, {}, OK, "ESTABLISHED"),
    ])  # fmt: skip
    assert tcp.timeout_key(track) == "tcp_close"  # as the kernel: a short timeout until the next packet
    play([(C, "A", 1101, 5001, {}, OK, "ESTABLISHED")], track)
    assert tcp.timeout_key(track) == "tcp_established"
    play([(S, "R", 5001, 0, {}, OK, "CLOSE")], track)  # exactly the client's RCV.NXT


def test_rst_exact_in_the_original_direction_and_with_data():
    play(handshake() + [(C, "RA", 1001, 5001, {"payload": b"diagnostic"}, OK, "CLOSE")])
    play(handshake() + [(C, "R", 1002, 0, {"payload": b"diagnostic"}, OK, "ESTABLISHED")])


def test_rst_exact_to_what_the_receiver_acknowledged_while_data_is_in_flight():
    play(handshake() + [
        (C, "PA", 1001, 5001, {"payload": b"x" * 100}, OK, "ESTABLISHED"),
        (C, "R", 1101, 0, {}, OK, "CLOSE"),  # the client's own next seq (the kernel's RST train)
    ])  # fmt: skip
    play(handshake() + [
        (S, "PA", 5001, 1001, {"payload": b"y" * 100}, OK, "ESTABLISHED"),
        (S, "R", 5001, 0, {}, OK, "CLOSE"),  # the client has acknowledged only up to 5001
    ])  # fmt: skip


def test_rst_answering_a_syn_must_acknowledge_it():
    """RFC 9293 3.10.7.3 (SYN-SENT): a RST is acceptable if its ACK acknowledges the SYN."""
    syn = [(C, "S", 1000, 0, {}, OK, "SYN_SENT")]
    play(syn + [(S, "RA", 0, 999, {}, OOW, "SYN_SENT"), (S, "R", 0, 0, {}, OOW, "SYN_SENT"),
                (S, "RA", 0, 1001, {}, OK, "CLOSE")])  # fmt: skip
    # The connection was refused: the client's next SYN opens a new session.
    play(syn + [(S, "RA", 0, 1001, {}, OK, "CLOSE"), (C, "S", 1000, 0, {}, REOPEN, "CLOSE")])


def test_last_ack_challenge_ack_is_not_the_last_ack():
    """RFC 5961 section 4: a SYN in LAST_ACK draws a challenge ACK that must not end the connection."""
    play(handshake() + [
        (C, "FA", 1001, 5001, {}, OK, "FIN_WAIT"),
        (S, "FA", 5001, 1002, {}, OK, "LAST_ACK"),
        (C, "S", 40_000, 0, {}, OK, "LAST_ACK"),  # ignored SYN
        (S, "A", 5002, 1002, {}, OK, "LAST_ACK"),  # the challenge ACK: state kept
        (C, "A", 1002, 5002, {}, OK, "TIME_WAIT"),  # the real last ACK
    ])  # fmt: skip


def test_sequence_numbers_wrap_at_2_32():
    top = 2**32 - 10
    track = play(handshake(client_isn=top) + [
        (C, "PA", top + 1, 5001, {"payload": b"x" * 20}, OK, "ESTABLISHED"),  # 4294967287..+20 wraps
        (S, "A", 5001, (top + 21) % 2**32, {}, OK, "ESTABLISHED"),
        (C, "PA", 11, 5001, {"payload": b"y"}, OK, "ESTABLISHED"),
        (C, "PA", (11 + 70_000) % 2**32, 5001, {"payload": b"z"}, OOW, "ESTABLISHED"),
        (C, "FA", 12, 5001, {}, OK, "FIN_WAIT"),
    ])  # fmt: skip
    assert track.seen[0].td_end == 13
    assert tcp.next_expected_seq(track, original=True) == 13


def test_a_syn_ack_with_a_wrong_ack_leaves_no_trace():
    play([
        (C, "S", 1000, 0, {}, OK, "SYN_SENT"),
        (S, "SA", 3_000_000_000, 1005, {}, OOW, "SYN_SENT"),  # spoofed: acknowledges no SYN
        (S, "SA", 5000, 1001, {}, OK, "SYN_RECV"),  # the real one, with a lower ISN, still fits
        (C, "A", 1001, 5001, {}, OK, "ESTABLISHED"),
    ])  # fmt: skip


def test_an_ack_before_the_syn_ack_is_invalid():
    play([
        (C, "S", 1000, 0, {}, OK, "SYN_SENT"),
        (C, "A", 1001, 5001, {}, INVALID, "SYN_SENT"),
        (C, "FA", 1001, 5001, {}, INVALID, "SYN_SENT"),
        (S, "A", 5001, 1001, {}, OK, "SYN_SENT"),  # sIG: maybe a half-open peer, let it through
    ])  # fmt: skip


def test_reply_ack_to_a_syn_then_client_reset_closes():
    """A half-open server answers the SYN with a (challenge) ACK; the client resets with seq = ack."""
    play([
        (C, "S", 1000, 0, {}, OK, "SYN_SENT"),
        (S, "A", 777, 31337, {}, OK, "SYN_SENT"),
        (C, "R", 31337, 0, {}, OK, "CLOSE"),
    ])  # fmt: skip


def test_tcp_new_opens_only_on_a_syn():
    assert tcp.tcp_new(pkt(C, "A", 1, 1)) == "invalid:no-session"
    assert tcp.tcp_new(pkt(C, "SA", 1, 1)) == "invalid:no-session"
    assert tcp.tcp_new(pkt(C, "FA", 1, 1)) == "invalid:no-session"
    assert tcp.tcp_new(pkt(C, "R", 1)) == "invalid:no-session"
    assert tcp.tcp_new(pkt(C, "SF", 1)) == "invalid:flags"
    assert tcp.tcp_new(pkt(C, "F", 1)) == "invalid:flags"
    track = tcp.tcp_new(pkt(C, "S", 1000, wscale=20, sack_perm=True, payload=b"fastopen"))
    peer = track.seen[0]
    assert (peer.td_end, peer.td_scale, peer.flags) == (1009, 14, tcp.WINDOW_SCALE | tcp.SACK_PERM)


def test_loose_pickup_is_liberal_except_for_resets():
    track = tcp.tcp_new(pkt(C, "PA", 123_456, 777, payload=b"mid-stream"), liberal=True)
    assert track.state is tcp.TcpState.ESTABLISHED and track.liberal
    assert tcp.timeout_key(track) == "tcp_unacknowledged"  # no reply seen yet
    play([
        (S, "A", 777, 123_466, {}, OK, "ESTABLISHED"),
        (C, "PA", 123_466 + 10_000_000, 777, {"payload": b"x"}, OK, "ESTABLISHED"),  # liberal
        (S, "R", 777 + 10_000_000, 0, {}, OOW, "ESTABLISHED"),  # but never an out-of-window RST
        (S, "R", 777, 0, {}, OK, "CLOSE"),
    ], track)  # fmt: skip


def test_snapshot_round_trip_through_json():
    track = play(handshake(client_opts={"wscale": 7, "sack_perm": True}, server_opts={"wscale": 8}) + [
        (C, "PA", 1001, 5001, {"payload": b"x" * 10}, OK, "ESTABLISHED"),
    ])  # fmt: skip
    data = json.loads(json.dumps(tcp.to_dict(track)))
    copy = tcp.from_dict(data)
    assert tcp.to_dict(copy) == tcp.to_dict(track) and copy.state is tcp.TcpState.ESTABLISHED
    play([(S, "A", 5001, 1011, {}, OK, "ESTABLISHED"), (S, "R", 5001, 0, {}, OK, "CLOSE")], copy)


def test_next_expected_seq_is_each_receivers_rcv_nxt():
    track = play(handshake() + [
        (C, "PA", 1001, 5001, {"payload": b"x" * 5}, OK, "ESTABLISHED"),
        (S, "PA", 5001, 1006, {"payload": b"y" * 7}, OK, "ESTABLISHED"),
    ])  # fmt: skip
    assert tcp.next_expected_seq(track, original=True) == 1006  # what the server expects next
    assert tcp.next_expected_seq(track, original=False) == 5008  # what the client expects next
    play([(C, "R", 1006, 0, {}, OK, "CLOSE")], track)


def test_snapshot_format_is_versioned_and_every_field_lands_in_its_place():
    track = play(handshake())
    data = tcp.to_dict(track)
    assert data["version"] == tcp.TRACK_FORMAT == 1
    # Every field a different value: a field stored under another's name would not round-trip.
    numbered = iter(range(70_000, 80_000, 17))
    for side in ("original", "reply"):
        data[side] = {name: next(numbered) for name in data[side]}
        data[side].update(td_scale=3 if side == "original" else 5, flags=0x21 if side == "original" else 0x12)
    data.update(last_seq=next(numbered), last_ack=next(numbered), last_end=next(numbered), last_win=4321,
                last_wscale=7, last_flags=0x41, last_dir=1, last_index=2, retrans=2, liberal=True)
    copy = tcp.from_dict(json.loads(json.dumps(data)))
    assert tcp.to_dict(copy) == data
    assert (copy.o_end, copy.r_maxack, copy.o_scale, copy.r_flags) == (
        data["original"]["td_end"], data["reply"]["td_maxack"], 3, 0x12)
    assert copy.seen == (tcp.TcpPeer(**data["original"]), tcp.TcpPeer(**data["reply"]))
    assert (copy.last_win, copy.last_dir, copy.last_index, copy.retrans, copy.liberal) == (4321, 1, 2, 2, True)
    # Written before the version key existed: the same fields, read as format 1.
    del data["version"]
    assert tcp.to_dict(tcp.from_dict(data))["reply"] == data["reply"]


def test_snapshot_with_values_out_of_range_is_refused():
    good = tcp.to_dict(play(handshake()))
    bad = [
        ("version", 2), ("last_dir", 2), ("last_index", 6), ("last_win", 65_536), ("last_wscale", 15),
        ("last_seq", -1), ("last_ack", 2**32), ("retrans", "many"),
        ("original.td_scale", 15), ("reply.td_end", 2**32), ("reply.flags", 256), ("original.td_maxwin", -5),
    ]  # fmt: skip
    for key, value in bad:
        data = json.loads(json.dumps(good))
        side, _, name = key.rpartition(".")
        (data[side] if side else data)[name] = value
        try:
            tcp.from_dict(data)
        except ValueError:
            continue
        raise AssertionError(f"{key}={value!r} was accepted")
    assert tcp.to_dict(tcp.from_dict(good)) == good


def test_a_tracked_connection_costs_few_bytes():
    """Regression guard for the memory per session: one flat object, equal numbers shared. The
    former layout (a track, two peer objects, a tuple and an int object per number) took 652 bytes
    (without a session's slots)."""
    opening = [seg(C, S, "S", seq=1000), seg(S, C, "SA", seq=5000, ack=1001), seg(C, S, "A", seq=1001, ack=5001)]
    talking = [seg(C, S, "PA", seq=1001, ack=5001, payload=b"x" * 100), seg(S, C, "A", seq=5001, ack=1101),
               seg(S, C, "PA", seq=5001, ack=1101, payload=b"y" * 50), seg(C, S, "A", seq=1101, ack=5051)]  # fmt: skip
    for packets in (opening, opening + talking):
        tracks = []
        gc.collect()
        tracemalloc.start()
        try:
            for _ in range(2000):
                first, *rest = (parse(data) for data in packets)
                track = tcp.tcp_new(first)
                for packet in rest:
                    assert tcp.tcp_update(track, packet, packet.sport == 40000) is None
                tracks.append(track)
            gc.collect()
            per_track = (tracemalloc.get_traced_memory()[0] - sys.getsizeof(tracks)) / len(tracks)
        finally:
            tracemalloc.stop()
        # A TcpTrack is a TcpSession (no key yet): the session's own slots come with it.
        assert per_track <= 380 + 8 * len(Session.__slots__), (len(packets), per_track)


def test_data_copies_the_window_of_another_track():
    track = play(handshake())
    liberal = tcp.to_dict(track)
    liberal["liberal"] = True
    track.data = tcp.from_dict(liberal).data
    assert track.liberal and tcp.to_dict(track) == liberal and len(track.data) == len(tcp.FIELDS)
    play([(C, "PA", 1001 + 10_000_000, 5001, {"payload": b"x"}, OK, "ESTABLISHED")], track)  # liberal now
