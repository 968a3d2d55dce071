"""The bulk stall: bytes that reached the server sidecar before its app socket was connected
are written to the app once it is, and their stream window must then go back to the client at
once. It was queued and not sent, so a client that had spent its window (a bulk transfer
sends 4 MiB before the app is dialled when the box is loaded) stopped reading its socket with
nothing in flight, until some other frame happened to flush the connection: the "4 of ~100
bulk rounds" stall of loadtests/README.md.

The HBONE connection and the app socket are stand-in transports that record what is written
(the sockets are outside the piece under test); the tunnel, HboneConnection and StreamLeg are
the real ones."""

from __future__ import annotations

from typing import Any

from proxy.tcp import tunnel as tn
from proxy.tcp.conn import TcpRecord
from proxy.tcp.legs import HboneConnection, StreamLeg


class Recorder:
    """A transport that takes every write at once (never pauses its protocol)."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.reading = True

    def write(self, data: Any) -> None:
        self.out.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        for c in chunks:
            self.write(c)

    def take(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        pass


def test_bytes_held_until_the_app_connected_reopen_the_clients_window_at_once():
    legs: list[StreamLeg] = []

    def on_open(conn: HboneConnection, sid: int, authority: str) -> None:
        leg = StreamLeg(TcpRecord("destination", None, None), False)
        leg.attach(conn, sid)  # the app is being dialled: its socket is not there yet
        legs.append(leg)

    client = tn.TunnelConnection(True)
    server = HboneConnection(False, on_open)
    wire = Recorder()
    server.connection_made(wire)  # type: ignore[arg-type]
    for _ in range(5):  # prefaces, SETTINGS and their ACKs
        server.data_received(client.data_to_send())
        client.receive(wire.take())
    sid = client.open("127.0.0.1:9000")
    window = client.h2.local_flow_control_window(sid)
    assert window == tn.LIMITS.stream_window
    client.send(sid, b"x" * window)  # a bulk transfer spends its whole stream window at once
    server.data_received(client.data_to_send())
    assert client.h2.local_flow_control_window(sid) == 0
    (leg,) = legs
    assert sum(map(len, leg.early)) == window  # held, not acknowledged: the app is not there
    client.receive(wire.take())
    assert client.h2.local_flow_control_window(sid) == 0

    app = Recorder()
    leg.connection_made(app)  # type: ignore[arg-type]  # the app is connected: bytes go on
    assert len(app.take()) == window
    client.receive(wire.take())  # what the server sidecar sent, with nothing else happening
    # the window is back (acknowledged in steps of half a window, as for any stream's bytes)
    assert client.h2.local_flow_control_window(sid) >= window // 2
