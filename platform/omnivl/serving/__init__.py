"""Online serving: the typed app arguments (here) and the Ray Serve app (`omnivl.cluster.serve_app`)."""
