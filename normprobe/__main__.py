import sys

from normprobe.cli import main

sys.exit(main())
