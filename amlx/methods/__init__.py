"""Attribution methods behind one interface (``AttributionMethod.attribute``), looked up by name.

``get("gradient_x_input", internal_batch_size=32)`` returns a configured method; ``names()`` lists them. A new
method is one file with a class decorated by ``@register_method("name")``, imported below.
"""

import amlx.methods.alti  # noqa: F401  (registration on import)
import amlx.methods.attention  # noqa: F401  (registration on import)
import amlx.methods.ensemble  # noqa: F401  (registration on import)
import amlx.methods.globenc  # noqa: F401  (registration on import)
import amlx.methods.integrated_gradients  # noqa: F401  (registration on import)
import amlx.methods.llm_explanation  # noqa: F401  (registration on import)
import amlx.methods.marc  # noqa: F401  (registration on import)
import amlx.methods.perturbation  # noqa: F401  (registration on import)
import amlx.methods.progressive  # noqa: F401  (registration on import)
import amlx.methods.rpi  # noqa: F401  (registration on import)
import amlx.methods.saliency  # noqa: F401  (registration on import)
import amlx.methods.sig  # noqa: F401  (registration on import)
import amlx.methods.solvex  # noqa: F401  (registration on import)
from amlx.methods import aml, gradient, random  # noqa: E402, F401  (registration on import)
from amlx.methods.base import AttributionMethod, get, names, register_method, resolve_targets
from amlx.methods.specs import MethodSpec, MethodSpecError, parse_methods

__all__ = ["AttributionMethod", "MethodSpec", "MethodSpecError", "get", "names", "parse_methods", "register_method",
           "resolve_targets"]
