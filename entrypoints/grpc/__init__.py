"""gRPC edge: validation, conversion, error mapping, servicers and the server."""
