"""The real-time hub: WebSocket connections, rooms, fan-out across processes (docs/realtime.md)."""
