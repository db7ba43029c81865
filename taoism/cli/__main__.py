"""``python -m taoism.cli``: the same as the ``taoism`` command."""

import sys

from taoism.cli import main

sys.exit(main())
