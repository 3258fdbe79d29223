import sys

from mtlc.cli import main

sys.exit(main())
