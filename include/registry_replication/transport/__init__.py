"""Transport: talking to a registry (the Distribution API v2 / OCI client, auth, typed errors,
references, bounds). Imports nothing above it."""
