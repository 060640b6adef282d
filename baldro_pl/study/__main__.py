"""``python -m baldro_pl.study SPEC.yaml``: the same as ``baldro-pl study SPEC.yaml``."""

import sys

from baldro_pl.study.runner import main

if __name__ == "__main__":
    sys.exit(main())
