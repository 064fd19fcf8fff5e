import sys

from linmaml.cli import main

sys.exit(main())
