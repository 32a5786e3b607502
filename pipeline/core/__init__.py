"""What every layer uses: typed errors, readers of untrusted bytes, atomic artifacts, the cache, statistics."""
