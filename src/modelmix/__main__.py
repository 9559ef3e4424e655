"""``python -m modelmix``: the same as the ``modelmix`` command."""

from modelmix.cli import main

if __name__ == "__main__":
    main()
