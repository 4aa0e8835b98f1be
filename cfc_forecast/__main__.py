"""``python -m cfc_forecast ...``: the ``cfc-forecast`` command (thread settings before torch loads)."""

import sys

from cfc_forecast.launch import main

sys.exit(main())
