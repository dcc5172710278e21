import sys

from jmlsim.cli import main

sys.exit(main())
