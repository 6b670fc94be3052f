"""Live updates over Phoenix Channels: the protocol (`phoenix`), the socket at
`/socket/websocket` (`sockets`) and the replica's fan-out of PubSub events (`hub`)."""
