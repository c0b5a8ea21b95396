import sys

from omnivl.cli import main

sys.exit(main())
