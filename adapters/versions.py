"""Print, as JSON, the versions of the named packages installed in this image."""

import json
import platform
import sys
from importlib import metadata


def main(names: list[str]) -> None:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    print(json.dumps({"python": platform.python_version(), "packages": versions}))


if __name__ == "__main__":
    main(sys.argv[1:])
