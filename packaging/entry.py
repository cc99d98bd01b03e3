"""PyInstaller entry script: the frozen `pinnace` executable starts here.

It only hands over to pinnace.__main__.main(), which dispatches the hidden helper roles (`__holder`,
`__supervise`, …) before importing typer, exactly as the console script and `python -m pinnace` do.
"""
import sys

from pinnace.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
