"""``python -m speedproxy.worker``: see :mod:`speedproxy.worker.process`."""

import sys

from speedproxy.worker.process import main

sys.exit(main())
