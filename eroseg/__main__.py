"""``python -m eroseg`` runs the command-line interface."""

from eroseg.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
