"""Under pytest (nbval), notebooks run in the smoke setting unless CNNLAB_SMOKE says otherwise."""

import os

os.environ.setdefault("CNNLAB_SMOKE", "1")
os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
