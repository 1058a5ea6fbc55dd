"""``python -m jaxplain.cli``."""

import sys

from jaxplain.cli import main

sys.exit(main())
