"""NPE (nonlinear processing engine) and router units, bit-exact with :mod:`ternopu.golden`.

One ``wiring.Component`` per function (see docs/npe.md):

================  =========================================================================
module            unit
================  =========================================================================
``exp``           :class:`ExpUnit` (``exp_approx``)
``recip``         :class:`RecipUnit` (``recip_approx``)
``rsqrt``         :class:`RsqrtUnit` (``rsqrt_approx``)
``rmsnorm``       :class:`RMSNorm` (exact sum of squares beside a stream + normalize pass)
``softmax``       :class:`OnlineSoftmaxUnit` (running max / folds / fixed-point sum + normalize)
``act``           :class:`ActUnit` (silu, swiglu, relu2, relu2_glu, residual_add)
``rope``          :class:`RopeUnit` (rotate-half RoPE)
``quant``         :class:`ActQuant` (per-token INT8 quantization), :class:`ToFp16`
``router``        :class:`Router` (score + bias < threshold -> routing bitmask)
================  =========================================================================
"""

from .act import ACT_OPS, ActUnit
from .exp import ExpUnit
from .quant import ActQuant, ToFp16
from .recip import RecipUnit
from .rmsnorm import RMSNorm
from .rope import RopeUnit
from .router import Router
from .rsqrt import RsqrtUnit
from .softmax import OnlineSoftmaxUnit

__all__ = ["ACT_OPS", "ActUnit", "ExpUnit", "ActQuant", "ToFp16", "RecipUnit", "RMSNorm",
           "RopeUnit", "Router", "RsqrtUnit", "OnlineSoftmaxUnit"]
