"""shardsync: a supervised, sharded mirror of Tradovate user/account data."""

__version__ = "0.1.0"
