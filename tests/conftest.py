"""Session setup shared by every test folder.

Importing turngym first takes the checkout root off ``sys.path`` (``python -m pytest`` run from
the root puts it there), so the root's folders can never shadow installed distributions such as
``kernels``, which transformers imports (see docs/DESIGN.md, "Layout"). The Makefile also runs
pytest under ``PYTHONSAFEPATH=1``; this covers a plain ``python -m pytest`` and xdist's workers.
"""

from __future__ import annotations

import turngym  # noqa: F401
