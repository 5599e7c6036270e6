"""relax_optax: the relativistic update scaling as an Optax transformation.

Public API, all importable from the package root:

- :func:`relativistic_scale`: the pure scaling function on pytrees.
- :func:`scale_by_relativistic`: the ``optax.GradientTransformation``.
- :func:`relativistic_adam`, :func:`relativistic_adamw`: the optimizers.
- :func:`speed_limit_warmup`: the warm-up schedule of relativistic-adam's ``adaptive_speed``.
- :func:`rgd`, :func:`rgd_eval_params`: Relativistic Gradient Descent (França et al.).
- :func:`scale_by_relative_speed_limit`: a limit relative to the run's own
  recent update norms (a spike guard); :class:`RelativeSpeedLimit` selects it
  in the optimizers.
"""

from relax_optax._formulas import FORMULAS as FORMULAS
from relax_optax._formulas import Formula as Formula
from relax_optax._groups import MODES as MODES
from relax_optax._groups import AxisName as AxisName
from relax_optax._groups import Mode as Mode
from relax_optax._groups import relativistic_scale as relativistic_scale
from relax_optax._pytorch import BIAS_CORRECTIONS as BIAS_CORRECTIONS
from relax_optax._pytorch import BiasCorrection as BiasCorrection
from relax_optax._recipes import SpeedLimit as SpeedLimit
from relax_optax._recipes import relativistic_adam as relativistic_adam
from relax_optax._recipes import relativistic_adamw as relativistic_adamw
from relax_optax._relative import RelativeSpeedLimit as RelativeSpeedLimit
from relax_optax._relative import ScaleByRelativeSpeedLimitState as ScaleByRelativeSpeedLimitState
from relax_optax._relative import scale_by_relative_speed_limit as scale_by_relative_speed_limit
from relax_optax._rgd import RGDLeapfrogState as RGDLeapfrogState
from relax_optax._rgd import RGDState as RGDState
from relax_optax._rgd import rgd as rgd
from relax_optax._rgd import rgd_eval_params as rgd_eval_params
from relax_optax._schedules import speed_limit_warmup as speed_limit_warmup
from relax_optax._transform import ScaleByRelativisticState as ScaleByRelativisticState
from relax_optax._transform import scale_by_relativistic as scale_by_relativistic

__version__ = "0.2.0.dev0"  # the one place; pyproject.toml reads it from here

__all__ = (
  "BIAS_CORRECTIONS",
  "FORMULAS",
  "MODES",
  "AxisName",
  "BiasCorrection",
  "Formula",
  "Mode",
  "RGDLeapfrogState",
  "RGDState",
  "RelativeSpeedLimit",
  "ScaleByRelativeSpeedLimitState",
  "ScaleByRelativisticState",
  "SpeedLimit",
  "relativistic_adam",
  "relativistic_adamw",
  "relativistic_scale",
  "rgd",
  "rgd_eval_params",
  "scale_by_relative_speed_limit",
  "scale_by_relativistic",
  "speed_limit_warmup",
)
