"""The gRPC baseline: ``python -m tools.bench.echo`` serves one unary method that returns
its request, with grpc.aio and a generic handler (bytes in, bytes out, no proto), on the
same kind of server as ``ledger serve``. Prints ``echo listening on PORT`` and runs until
SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc

from tools.bench.payloads import ECHO_METHOD


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def serve() -> None:
    service, method = ECHO_METHOD.strip("/").split("/")
    handler = grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server = grpc.aio.server(handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"echo listening on {port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1.0)


if __name__ == "__main__":
    asyncio.run(serve())
