"""``python -m hemaseg`` = the ``hemaseg`` command."""

from .cli import main

if __name__ == "__main__":
    main()
