"""Shared pytest set-up: a non-interactive matplotlib backend for every test process."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
