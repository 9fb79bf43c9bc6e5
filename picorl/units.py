"""Units shared by every floor (a leaf module: it imports nothing)."""

GIB = 2**30  # bytes in a GiB; memory metrics named ``*_gb`` are in GiB
