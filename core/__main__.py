import os
import sys

# Before TensorFlow loads: no start-up chatter (TF_CPP_MIN_LOG_LEVEL=0 brings it back).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core.cli.main import main  # noqa: E402

sys.exit(main())
