"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, KServe's and Triton's API) on its own
port (BERTSERVE_GRPC_PORT): the .proto and its generated stubs (`make grpc-stubs`), the codec (protobuf messages
⇄ texts and outputs), the servicer (the six RPCs over app.protocol.v2, keys, errors, metrics) and the server's
start, connection limits and drain (server.py); whether its port can be bound, asked by `bertserve serve` before
any worker starts (port.py).

Nothing is imported here: the generated modules register package `inference` in protobuf's default descriptor
pool, where tritonclient.grpc registers its own `inference` messages, and the two cannot share a process (a test
process holding tritonclient.grpc imports app.main; only the server's lifespan imports app.api.grpc.server)."""
