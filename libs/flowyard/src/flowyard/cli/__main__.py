"""``python -m flowyard.cli`` is the same as the ``flowyard`` command."""

import sys

from flowyard.cli.main import main

sys.exit(main())
