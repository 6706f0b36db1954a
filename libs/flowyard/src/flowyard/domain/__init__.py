"""The pure domain: definitions, the graph, the run state machine. No I/O here."""
