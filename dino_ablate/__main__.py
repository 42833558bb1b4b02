import sys

from dino_ablate.cli import main

sys.exit(main())
