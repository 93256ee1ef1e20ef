"""Moving frames between processes: gRPC servers and channels, security, and the request multiplexer."""
