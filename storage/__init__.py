"""Content-addressed blobs, unpacked layers, image records and their metadata database."""
