import sys

from snapd.cli import main

sys.exit(main())
