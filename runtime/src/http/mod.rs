//! HTTP/1.1 server connections. Bytes in, events and bytes out; never touches a
//! socket or a clock.
