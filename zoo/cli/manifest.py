"""``python -m zoo.cli.manifest PACKAGE...``: write the ``zoo_plugin.json`` manifest of plugin packages.

The manifest declares what a plugin adds, and ``zoo list`` reads it instead of importing the plugin
(``zoo.registry``); this completes each entry from its class and copies in the released checkpoints declared
beside the methods (``PRETRAINED``). A test checks that every shipped manifest agrees with them.

Example:
    $ python -m zoo.cli.manifest zoo_cgi_dm zoo
"""

from __future__ import annotations

import argparse
import sys

from zoo.errors import ZooError


def main(argv: list[str] | None = None) -> int:
    """Write the manifest of each package named on the command line; print its path."""
    from zoo.registry import write_manifest

    parser = argparse.ArgumentParser(prog="python -m zoo.cli.manifest",
                                     description="Write the zoo_plugin.json manifest of plugin packages.")
    parser.add_argument("packages", nargs="+", help="e.g. zoo_cgi_dm zoo")
    for package in parser.parse_args(argv).packages:
        try:
            print(write_manifest(package))
        except ZooError as err:
            print(f"zoo: error: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
