"""``python -m HILASegmentLib.training WORKSPACE [options]``: the same run as ``hila train`` (for PythonSlicer)."""
import sys
import time

_T0 = time.monotonic()


def main(argv=None) -> int:
    import argparse

    from ..cli import common_parent
    from ..cli import main as cli_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        p = argparse.ArgumentParser(prog="python -m HILASegmentLib.training", parents=[common_parent()])
        from ..cli.train import add_arguments

        add_arguments(p)
        p.print_help()
        return 0
    return cli_main(["train", *argv])


if __name__ == "__main__":
    sys.exit(main())
