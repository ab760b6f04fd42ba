"""Engine: what replication does (snapshots, diff, plan, copy, prune, leases, sync, the event
path, verification, run folders), on the transport and the store."""
