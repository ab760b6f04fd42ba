"""Local, real registries for tests, benchmarks and the demo.

Starts Debian's ``docker-registry`` (CNCF distribution 2.8) on free loopback ports, configured
the way GitLab configures its registry, and builds synthetic images to push into them.
"""
