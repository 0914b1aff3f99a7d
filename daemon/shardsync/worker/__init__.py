"""The worker: one forked process per shard remainder, one WebSocket, one sink.

    boot.py        after fork: pdeathsig, signals, environment, fds, title, logging; runs the Worker
    session.py     the state machine: connect -> authorize -> sync -> live, reconnect on any fault
    parent.py      the link to the parent: inbox (token, permit, stop), heartbeats, state, SIGTERM
    receive.py     one read pass with its deadlines (client ping, heartbeat, idle cut-off, quiet rule)
    snapshot.py    the snapshot's parts, end markers and quiet rule (pure)
    batch.py       pending changes -> sink.write -> mirror.commit / rollback ("commit, then ack")
    connection.py  the WebSocket (websocket-client) with a read-ahead fast path
    options.py     what one worker needs to know; allocator.py keeps freed batch memory
"""
