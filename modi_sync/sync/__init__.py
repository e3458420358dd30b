"""Sync over websockets: y-websocket protocol, rooms, group commit, fan-out between instances."""
