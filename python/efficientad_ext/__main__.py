"""``python -m efficientad_ext ...`` is the ``efficientad`` command line (:mod:`.cli`)."""
import sys

from .cli import main

sys.exit(main())
