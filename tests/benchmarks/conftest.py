"""The pytest-benchmark suite: not part of the default test run (``tox -e benchmark``)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
