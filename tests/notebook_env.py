"""A pytest plugin (``-p tests.notebook_env`` in pyproject.toml): under pytest, nbval runs the
notebooks in the smoke setting unless CNNLAB_SMOKE says otherwise. It lives here, not in
notebooks/, so the learner's folder holds only the series."""

import os

os.environ.setdefault("CNNLAB_SMOKE", "1")
os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
