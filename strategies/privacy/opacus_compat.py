"""The Opacus names this project uses, imported without Opacus' logging side effect.

`opacus.utils.module_utils` calls `logging.basicConfig()` on import, which gives the
root logger a handler and makes every Flower log line appear twice. Import Opacus
only through this module, which removes that handler again.
"""

import logging

_root = logging.getLogger()
_handlers_before = list(_root.handlers)

from opacus import PrivacyEngine  # noqa: E402
from opacus.accountants import create_accountant  # noqa: E402
from opacus.accountants.utils import get_noise_multiplier  # noqa: E402
from opacus.validators import ModuleValidator  # noqa: E402

for _handler in [h for h in _root.handlers if h not in _handlers_before]:
    _root.removeHandler(_handler)

__all__ = ["ModuleValidator", "PrivacyEngine", "create_accountant", "get_noise_multiplier"]
