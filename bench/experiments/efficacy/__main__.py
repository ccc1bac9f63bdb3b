"""``python -m bench.experiments.efficacy``: see the package's docstring."""
from .cli import main

main()
