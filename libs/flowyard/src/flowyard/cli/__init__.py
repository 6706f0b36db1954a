"""The ``flowyard`` command line: talks to the API gateway over gRPC.

``main`` parses arguments and does the I/O; ``render`` and ``workflows`` turn protobuf
messages into text without touching the network, so they are tested directly.
"""
