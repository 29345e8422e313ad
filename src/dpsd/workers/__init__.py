"""``dpsd serve --workers N``: one supervisor process and N worker processes serving the
same listening sockets and the same store (supervisor.py says how)."""
