"""Write the shapes task (:mod:`splathead_recipes.shapes_task`): a labelled ImageFolder drawn in code.

    python recipes/shapes_task.py --output data/shapes          # 2000 train + 400 val, 64 px
"""

import sys

from splathead_recipes.shapes_task import main

if __name__ == "__main__":
    sys.exit(main())
