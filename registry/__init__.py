"""OCI distribution client: references, auth, manifests, blobs."""
