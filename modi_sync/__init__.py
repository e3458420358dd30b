"""modi-sync: an offline-first CRDT replication server for Magni."""

__version__ = "0.1.0"
