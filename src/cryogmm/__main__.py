import sys

from cryogmm.cli import main

sys.exit(main())
