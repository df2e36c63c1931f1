"""etcd v3 access shared by every Tabby component.

The datastore is the only shared state in a Tabby cluster. This package wraps aetcd with
what every caller needs and aetcd leaves out: calicoctl-style configuration (ETCD_* variables
or a config file), TLS, several endpoints with fail-over, compare-on-mod_revision
transactions, bounded retries with jitter, watches that resume from a revision and fall back
to a full resync after compaction, detect a silent stream (progress requests, require-leader,
keepalive) and publish it on a WatchHealth, paginated lists, and leases. Keys are always given relative to the
configured prefix (default ``/tabby/``), so tests can share one etcd under separate prefixes.
"""

from datastore.client import KV, Datastore, Delete, Put, TxnResult, mod_is
from datastore.config import ConfigError, EtcdConfig
from datastore.errors import Conflict, DatastoreError, DatastoreUnavailable, TooManyConflicts
from datastore.retry import retry_on_conflict
from datastore.watch import WatchEvent, WatchHealth, WatchResync, WatchSilent

__all__ = [
    "KV",
    "ConfigError",
    "Conflict",
    "Datastore",
    "DatastoreError",
    "DatastoreUnavailable",
    "Delete",
    "EtcdConfig",
    "Put",
    "TooManyConflicts",
    "TxnResult",
    "WatchEvent",
    "WatchHealth",
    "WatchResync",
    "WatchSilent",
    "mod_is",
    "retry_on_conflict",
]
