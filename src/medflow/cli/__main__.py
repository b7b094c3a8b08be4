"""`python -m medflow.cli`: the `medflow` console script."""

from medflow.cli import main

main()
