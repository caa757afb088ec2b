"""`python -m engine doctor|generate|tiny-model|worker`: the command line lives in tools/cli.py."""

from tools.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
