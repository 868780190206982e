"""``python -m efficientad_ext ...`` is the ``efficientad`` command line (:mod:`.cli`)."""

import sys

from efficientad_ext.cli import main

sys.exit(main())
