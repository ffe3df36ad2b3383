import sys

from fedoa.cli import main

sys.exit(main())
