"""``python -m edgeseal.ota_server.cli``: the same as ``edgeseal-server``."""

from __future__ import annotations

import sys

from edgeseal.ota_server.cli import main

sys.exit(main())
