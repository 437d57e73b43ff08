"""Scale-out on existing engines: Ray Serve with adapter-affinity routing (model multiplexing)."""
