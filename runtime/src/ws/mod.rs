//! WebSocket sessions (being written).
