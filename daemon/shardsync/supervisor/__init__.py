"""The parent process: one single-threaded loop supervising one worker per shard.

- ``arbiter``: the loop, signals, shutdown, reload, status listener; orchestrates only.
- ``table`` / ``shard``: the shard table and one shard's worker (fork, pipes, exit).
- ``timers``: every deadline of the loop, one object each, in one list.
- decisions, pure: ``policy`` (restarts), ``hang``, ``readiness``, ``tokens``, ``permits``,
  ``reload`` (the planner), ``options`` (what a worker depends on).
- ``login`` / ``authcall``: the one login, run in short-lived helper processes.
- ``processes``: fork, pidfd, kill, waitpid in one injectable value (unit tests fake it).
- ``status`` (model), ``metrics`` and ``httpd`` (the listener), ``tally`` (a shard's counters across
  its workers); ``notify`` (sd_notify); ``signals``.
"""
