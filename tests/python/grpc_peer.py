"""gRPC peers for the GRPCRoute tests, on the official gRPC library (grpcio), without generated
code: requests and responses are raw bytes.

  grpc_peer.py serve NAME          serves every method on 127.0.0.1 (h2c); prints the port, then
                                   answers each call with "NAME /service/method value-of-x-echo"
  grpc_peer.py call PORT AUTHORITY METHOD [KEY=VALUE...]
                                   calls METHOD (/service/method) through 127.0.0.1:PORT with
                                   AUTHORITY as :authority and the pairs as metadata; prints the
                                   answer, or "status CODE" when the call fails
"""

import sys
from concurrent import futures

import grpc


class Echo(grpc.GenericRpcHandler):
    def __init__(self, name):
        self.name = name

    def service(self, details):
        method = details.method
        echo = dict(details.invocation_metadata).get("x-echo", "")

        def answer(request, context):
            return f"{self.name} {method} {echo}".encode()

        return grpc.unary_unary_rpc_method_handler(answer)


def serve(name):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers([Echo(name)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def call(port, authority, method, pairs):
    metadata = [tuple(p.split("=", 1)) for p in pairs]
    options = [("grpc.default_authority", authority)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = channel.unary_unary(method)
        try:
            print(stub(b"ping", metadata=metadata, timeout=10).decode())
        except grpc.RpcError as e:
            print(f"status {e.code().name}")


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        call(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
