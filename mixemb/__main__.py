"""``python -m mixemb`` is the ``mixemb`` command."""

import sys

from mixemb.cli import main

sys.exit(main())
