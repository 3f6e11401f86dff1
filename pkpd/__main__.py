"""``python -m pkpd``: the same command as the installed ``pkpd`` script."""

from pkpd.cli import main

if __name__ == "__main__":
    main(prog_name="pkpd")
