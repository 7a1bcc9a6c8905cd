"""Run the app in Flower's simulation engine from the checkout: `python run_simulation.py
--num-clients 10 --rounds 5 ...`, the same as the installed `fl-app-simulate` (its options,
output and exit status: `fl_app/simulate.py`)."""

import sys

from fl_app.simulate import main

if __name__ == "__main__":
    sys.exit(main())
