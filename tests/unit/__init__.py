"""Fast tests in one process: encodings, transport parts, the engine and the coordinator without sockets, the layering."""
