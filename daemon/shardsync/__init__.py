"""shardsync: a supervised, sharded mirror of Tradovate user/account data.

Map (ARCHITECTURE.md has the allowed and forbidden import arrows):

    cli.py, demo.py, statusclient.py   the ``shardsync`` command and its subcommands
    config/                            TOML -> frozen, validated settings (every error names file and key)
    supervisor/                        the parent: one single-threaded loop over one worker per shard
    worker/                            one forked process per shard: session, mirror, sink, reconnects
    protocol.py, syncmessage.py        pure codec: frames and messages; snapshot collections
    mirror.py, change.py               the shard's state, reconciliation, and the change record (pure;
                                       with entitytext, attribution, changeseq)
    sinks/                             sqlite, jsonl, postgres: current state, change log, shard_status
    follow/, query.py                  consumers: the change feed and queries across shard files
    auth.py, credentials.py, ipc.py    REST login/renewal; where secrets come from; parent <-> worker pipe
    secrets.py, exitcodes.py, logs.py  shared terms: redaction, exit codes, JSON logs (logrecord, journal)
    simulator/                         the protocol-faithful fake Tradovate (never loaded by ``run``)
"""

__version__ = "0.1.0"
