"""HTTP/2 for the sidecar's data path: the client-facing server protocol (``server``), the
multiplexed upstream pool (``client``) and the gRPC rules on top of both (``grpc``)."""
