"""The user-side connection to a controller: I/O thread and result table."""
