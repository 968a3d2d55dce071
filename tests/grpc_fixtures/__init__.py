"""gRPC peers for the HTTP/2 tests: ``echo.proto`` compiled at test time with grpc_tools (into a
tmp dir, nothing generated is checked in) and a grpcio server implementing it."""

from __future__ import annotations

import importlib
import sys
import threading
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
MAX_MESSAGE = 64 * 1024 * 1024
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE),
                   ("grpc.max_send_message_length", MAX_MESSAGE)]


def channel(port: int, authority: str = "echo") -> Any:
    """A plaintext grpcio channel to a sidecar's outbound port on loopback, naming the service
    in ``:authority`` as an app's channel does (no HTTP proxy from the environment)."""
    import grpc

    return grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[("grpc.default_authority", authority), ("grpc.enable_http_proxy", 0),
                 *CHANNEL_OPTIONS],
    )


_lock = threading.Lock()
_built: tuple[ModuleType, ModuleType] | None = None


def build(out: Path) -> tuple[ModuleType, ModuleType]:
    """(echo_pb2, echo_pb2_grpc), generated into ``out`` once per process."""
    global _built
    with _lock:
        if _built is not None:
            return _built
        from grpc_tools import protoc

        out.mkdir(parents=True, exist_ok=True)
        rc = protoc.main(["protoc", f"-I{HERE}", f"--python_out={out}", f"--grpc_python_out={out}",
                          str(HERE / "echo.proto")])
        if rc != 0:
            raise RuntimeError(f"protoc failed with {rc}")
        sys.path.insert(0, str(out))
        try:
            pb2 = importlib.import_module("echo_pb2")
            grpc_mod = importlib.import_module("echo_pb2_grpc")
        finally:
            sys.path.remove(str(out))
        _built = (pb2, grpc_mod)
        return _built


class EchoServer:
    """A real grpcio server (its own threads) implementing ``meshtest.Echo``.

    Unary understands a few commands in ``text``: ``sleep:SECONDS``, ``flaky:KEY:N`` (UNAVAILABLE
    for the first N calls with that key, then OK), ``deadline`` (the time remaining the server
    saw), ``whoami`` (the server's name), ``metadata`` (the request metadata).
    """

    def __init__(self, pb2: ModuleType, pb2_grpc: ModuleType, name: str = "echo") -> None:
        import grpc

        self.name = name
        self.pb2 = pb2
        self.calls: dict[str, int] = {}
        self.total = 0
        self._lock = threading.Lock()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=CHANNEL_OPTIONS)
        pb2_grpc.add_EchoServicer_to_server(self._servicer(pb2_grpc), server)
        self.port = server.add_insecure_port("127.0.0.1:0")
        self.server = server

    def start(self) -> EchoServer:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(0).wait(5)

    def _servicer(self, pb2_grpc: ModuleType) -> Any:
        import grpc

        pb2 = self.pb2
        outer = self

        class Servicer(pb2_grpc.EchoServicer):  # type: ignore[misc,name-defined]
            def Unary(self, request: Any, context: Any) -> Any:
                with outer._lock:
                    outer.total += 1
                text = request.text
                if text.startswith("sleep:"):
                    import time

                    end = time.monotonic() + float(text[6:])
                    while time.monotonic() < end and context.is_active():
                        time.sleep(0.01)
                elif text.startswith("flaky:"):
                    _, key, n = text.split(":")
                    with outer._lock:
                        seen = outer.calls.get(key, 0)
                        outer.calls[key] = seen + 1
                    if seen < int(n):
                        context.abort(grpc.StatusCode.UNAVAILABLE, f"flaky {seen + 1}")
                elif text == "whoami":
                    return pb2.Msg(text=outer.name)
                elif text == "deadline":
                    return pb2.Msg(text="%.3f" % (context.time_remaining() or -1.0))
                elif text == "metadata":
                    md = sorted(f"{k}={v}" for k, v in context.invocation_metadata()
                                if isinstance(v, str))
                    return pb2.Msg(text="\n".join(md))
                return pb2.Msg(data=request.data, count=request.count, text=text)

            def ServerStream(self, request: Any, context: Any) -> Any:
                for i in range(request.count):
                    yield pb2.Msg(data=request.data, count=i)

            def ClientStream(self, request_iterator: Any, context: Any) -> Any:
                n = total = 0
                for m in request_iterator:
                    n += 1
                    total += len(m.data)
                return pb2.Msg(count=n, text=str(total))

            def Bidi(self, request_iterator: Any, context: Any) -> Any:
                for m in request_iterator:
                    yield pb2.Msg(data=m.data, count=m.count)

            def Forbidden(self, request: Any, context: Any) -> Any:
                return pb2.Msg(text="reached")

        return Servicer()
