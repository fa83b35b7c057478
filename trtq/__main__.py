"""`python -m trtq`: the same as the `trtq` command."""

import sys

from trtq.cli import main

sys.exit(main())
