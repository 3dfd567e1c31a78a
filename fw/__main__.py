"""`python -m fw` runs the command line."""

from fw.cli import main

main()
