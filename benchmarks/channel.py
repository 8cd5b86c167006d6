"""Sections (a) delivery time and goodput, and (b) handshake latency in round trips.

Both run against one agent and one simulator; the raw-channel baselines (throughput,
echo round trip) use extra channels with the same options that the agent never sees,
driven by a plain Unix socket client on the dom0 side and a raw ``ChannelDevice`` on
the guest side, with no protocol at all.
"""

import random
import socket
import statistics
import threading
import time
from typing import Any, Callable, Dict, List

from testbed.simulator import SimulatedChannel, SimulatorOptions
from xenchannel.guest import ChannelDevice, GuestClient

from .harness import (
    GUEST_CONFIG,
    KIB,
    MIB,
    BenchError,
    Workspace,
    fmt_rate,
    fmt_seconds,
    fmt_size,
    fmt_spread,
    make_bundle,
    met,
    print_table,
    spread,
    wait_until,
)

GOODPUT_TARGET = 0.9  # goodput / raw throughput for the large bundle


def _open_raw(channel: SimulatedChannel, timeout: float = 10.0) -> ChannelDevice:
    """Open the guest end raw and wait until the simulator has seen the open."""
    device = ChannelDevice.open(channel.device_path, timeout, 5.0)
    try:
        wait_until("the simulator noticing the guest open", lambda: channel.guest_is_open, 10, None)
    except BaseException:
        device.close()
        raise
    return device


def _connect(channel: SimulatedChannel, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(channel.socket_path)
        wait_until("the simulator accepting", lambda: channel.host_is_connected, timeout, None)
    except BaseException:
        sock.close()
        raise
    return sock


# --------------------------------------------------------------------------- raw


def raw_transfer_seconds(channel: SimulatedChannel, payload: bytes, timeout: float) -> float:
    """Seconds from the first byte sent into the socket to the last read from the device."""
    device = _open_raw(channel)
    try:
        sock = _connect(channel)
        try:
            errors: List[BaseException] = []

            def send() -> None:
                try:
                    sock.sendall(payload)
                except BaseException as exc:  # reported by the main thread
                    errors.append(exc)

            sender = threading.Thread(target=send, name="raw-sender", daemon=True)
            received = bytearray()
            start = time.monotonic()
            deadline = start + timeout
            sender.start()
            while len(received) < len(payload):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or errors:
                    raise BenchError(
                        f"raw transfer got {len(received)} of {len(payload)} bytes within "
                        f"{timeout:g} s{': ' + str(errors[0]) if errors else ''}"
                    )
                received += device.read(min(remaining, 1.0))
            elapsed = time.monotonic() - start
            sender.join(timeout)
            if bytes(received) != payload:
                raise BenchError("the raw transfer arrived altered")
            return elapsed
        finally:
            sock.close()
            # Let the simulator see the client leave before the next one connects.
            wait_until("the raw client leaving", lambda: not channel.host_is_connected, 10, None)
    finally:
        device.close()


def echo_rtts(channel: SimulatedChannel, samples: int) -> List[float]:
    """Round trips of one byte: socket -> device -> echoed by a guest thread -> socket."""
    device = _open_raw(channel)
    stop = threading.Event()
    errors: List[BaseException] = []

    def echo() -> None:
        try:
            while not stop.is_set():
                data = device.read(0.1)
                if data:
                    device.write(data, 5.0)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=echo, name="echo", daemon=True)
    thread.start()
    rtts: List[float] = []
    try:
        sock = _connect(channel)
        try:
            for i in range(samples + 3):  # three warm-up round trips
                start = time.monotonic()
                sock.sendall(b"x")
                if sock.recv(1) != b"x":
                    raise BenchError("the echo came back altered or the channel closed")
                if i >= 3:
                    rtts.append(time.monotonic() - start)
        finally:
            sock.close()
    finally:
        stop.set()
        thread.join(5.0)
        device.close()
    if errors:
        raise BenchError(f"the guest echo thread failed: {errors[0]}")
    return rtts


# --------------------------------------------------------------------------- protocol


def fetch_end_to_end(link: str, digest: str) -> float:
    start = time.monotonic()
    with GuestClient.open(link, GUEST_CONFIG) as client:
        bundle = client.fetch_bundle()
        elapsed = time.monotonic() - start
    if bundle.digest() != digest:
        raise BenchError("the guest received a different bundle")
    return elapsed


def fetch_transfer_only(link: str, digest: str) -> float:
    with GuestClient.open(link, GUEST_CONFIG) as client:
        client.handshake()
        start = time.monotonic()
        bundle = client.fetch_bundle()
        elapsed = time.monotonic() - start
    if bundle.digest() != digest:
        raise BenchError("the guest received a different bundle")
    return elapsed


def handshakes(link: str, count: int) -> List[Dict[str, float]]:
    out = []
    for _ in range(count):
        time.sleep(0.05)
        with GuestClient.open(link, GUEST_CONFIG) as client:
            session = client.handshake()
        out.append({"elapsed": session.elapsed, "hellos": session.hellos})
    return out


# --------------------------------------------------------------------------- sections

SETTLE = 0.1  # idle time before each timed run: the simulator's token bucket refills


def _settled(fn: Callable[..., float], *args: Any) -> float:
    time.sleep(SETTLE)
    return fn(*args)


def run(rate: float, quick: bool) -> Dict[str, Any]:
    """Sections (a) and (b); prints their tables and returns their figures."""
    reps = 3
    large = 256 * KIB if quick else MIB
    sizes = {"4 KiB": 4 * KIB, fmt_size(large): large}
    rtt_samples = 20 if quick else 50
    hs_count = 5 if quick else 20
    throttled = SimulatorOptions(rate=rate)
    unthrottled = SimulatorOptions(rate=None)
    # At the throttled rate a transfer takes size / rate; allow plenty on top.
    timeout = 30.0 + 3 * large / rate

    ws = Workspace("xcb-a-")
    try:
        bundles = {
            label: make_bundle(f"bundle{n}", size) for n, (label, size) in enumerate(sizes.items())
        }
        links = {
            label: ws.add_domain(f"bundle{n}", b, throttled)
            for n, (label, b) in enumerate(bundles.items())
        }
        modes = {"throttled": throttled, "unthrottled": unthrottled}
        hs_links = {
            m: ws.add_domain(f"hs-{m}", make_bundle(f"hs-{m}"), o) for m, o in modes.items()
        }
        raw_tp = ws.add_raw_channel("throughput", throttled)
        raw_echo = {m: ws.add_raw_channel(f"echo-{m}", o) for m, o in modes.items()}

        # ---------------------------------------------------------------- (a)
        section_start = time.monotonic()
        agent = ws.start_agent()
        ws.wait_connected(
            [f"bundle{n}" for n in range(len(sizes))] + [f"hs-{m}" for m in modes], 60.0
        )
        agent_ready = time.monotonic()

        delivery: Dict[str, Any] = {}
        rows = []
        for label, bundle in bundles.items():
            size = len(bundle.encode())
            digest = bundle.digest()
            payload = random.Random(size).randbytes(size)
            raw = [_settled(raw_transfer_seconds, raw_tp, payload, timeout) for _ in range(reps)]
            e2e = [_settled(fetch_end_to_end, links[label], digest) for _ in range(reps)]
            xfer = [_settled(fetch_transfer_only, links[label], digest) for _ in range(reps)]
            raw_rate = size / statistics.median(raw)
            goodput = size / statistics.median(xfer)
            ratio = goodput / raw_rate
            is_large = size >= large
            delivery[label] = {
                "bundle_bytes": size,
                "user_data_bytes": len(bundle.user_data or b""),
                "end_to_end_s": spread(e2e),
                "transfer_s": spread(xfer),
                "raw_s": spread(raw),
                "raw_bytes_per_s": raw_rate,
                "goodput_bytes_per_s": goodput,
                "goodput_over_raw": ratio,
                "target": GOODPUT_TARGET if is_large else None,
                "target_met": (ratio >= GOODPUT_TARGET) if is_large else None,
            }
            target = f">= {GOODPUT_TARGET}: {met(ratio >= GOODPUT_TARGET)}" if is_large else "-"
            rows.append(
                [
                    fmt_size(size),
                    fmt_spread(spread(e2e)),
                    fmt_spread(spread(xfer)),
                    fmt_spread(spread(raw)),
                    fmt_rate(goodput),
                    fmt_rate(raw_rate),
                    f"{ratio:.3f}",
                    target,
                ]
            )
        section_a = time.monotonic() - section_start
        print_table(
            f"(a) Delivery time and goodput over the simulator at {rate:g} B/s "
            f"(median [min .. max] of {reps}; {section_a:.1f} s)",
            [
                "bundle",
                "end to end (open..verified+ack)",
                "transfer (after handshake)",
                "raw, same bytes",
                "goodput",
                "raw",
                "goodput/raw",
                "target",
            ],
            rows,
        )
        print(
            "    raw = the same simulated channel, no protocol: socket sendall -> raw device "
            "read of as many bytes as the bundle\n"
            "    goodput = bundle bytes / median transfer time; each run starts from an idle "
            f"channel (token bucket full: a burst of {2 * rate / 100:.0f} B)"
        )

        # ---------------------------------------------------------------- (b)
        section_start = time.monotonic()
        handshake: Dict[str, Any] = {}
        rows = []
        for mode, options in modes.items():
            rtt = statistics.median(echo_rtts(raw_echo[mode], rtt_samples))
            results = handshakes(hs_links[mode], hs_count)
            elapsed = [r["elapsed"] for r in results]
            hellos = [r["hellos"] for r in results]
            trips = statistics.median(elapsed) / rtt
            handshake[mode] = {
                "rate": options.rate,
                "rtt_s": rtt,
                "rtt_samples": rtt_samples,
                "handshake_s": spread(elapsed),
                "round_trips": trips,
                "beyond_one_rtt_s": statistics.median(elapsed) - rtt,
                "hellos": spread(hellos),
            }
            rows.append(
                [
                    mode if options.rate is None else f"{mode} ({options.rate:g} B/s)",
                    fmt_seconds(rtt),
                    fmt_spread(spread(elapsed)),
                    f"{trips:.1f}",
                    fmt_seconds(statistics.median(elapsed) - rtt),
                    f"{statistics.median(hellos):g} [{min(hellos)} .. {max(hellos)}]",
                ]
            )
        section_b = time.monotonic() - section_start
        print_table(
            f"(b) Handshake latency, agent already connected ({hs_count} handshakes, "
            f"RTT median of {rtt_samples}; {section_b:.1f} s)",
            [
                "channel",
                "raw RTT (1-byte echo)",
                "handshake median [min .. max]",
                "round trips",
                "beyond 1 RTT",
                "HELLOs sent",
            ],
            rows,
        )
        print(
            "    round trips = median handshake time / median raw RTT; the protocol needs 1 "
            "(HELLO -> WELCOME);\n    beyond 1 RTT = time spent encoding, decoding and "
            "scheduling in the client, the agent process and the simulator"
        )
        agent.check_alive()
        return {
            "delivery": {
                "rate_bytes_per_s": rate,
                "repetitions": reps,
                "bundles": delivery,
                "agent_startup_s": agent_ready - agent.started_at,
                "section_seconds": section_a,
            },
            "handshake": dict(handshake, section_seconds=section_b),
        }
    finally:
        ws.close()
