"""The ``vd`` command line: a thin shell over the library.

Each command parses its options, loads and validates its recipe or checkpoint, calls one
function from ``vdcli.tasks`` and prints a short summary. A ``VdError`` becomes one red line on
stderr and exit code 2 (``vd --debug ...`` shows the traceback); anything else is a bug and keeps
its traceback.

One module per command family, mirroring ``vdcli/tasks/``: ``vit`` (patchify, train-vit,
attn-map), ``vae`` (train-vae, interpolate), ``text`` (train-clip), ``ldm`` (train-ldm, sample, inpaint, diffuse), ``control`` (control, train-controlnet), ``runs`` (runs compare). ``app`` holds
the Typer app and the error handling, ``options`` the option types they share.
"""

# Importing a module registers its commands, in the order --help lists them: the order of learning.
from vdcli.cli import vit  # noqa: F401, I001
from vdcli.cli import vae  # noqa: F401
from vdcli.cli import text  # noqa: F401
from vdcli.cli import ldm  # noqa: F401
from vdcli.cli import control  # noqa: F401
from vdcli.cli import runs  # noqa: F401
from vdcli.cli.app import app, main

__all__ = ["app", "main"]
