"""The ternopu compiler: model -> HBM image + instruction programs.

* :mod:`.layout`: HBM address space, striped streams, KV layout descriptor, buffer roles.
* :mod:`.plan`: memory planner (what goes where, what fits, :class:`CompileError`).
* :mod:`.program`: program generator (decode steps, prefill chunks, dependency tokens, SKIP_IF).
* :mod:`.image`: image builder / writer / reader.

See docs/compiler.md.
"""

from .image import Image, ImageError, build_image, read_image, write_image
from .plan import CompileError, MemoryPlan, max_context, plan_memory
from .program import step_program, tokens_program

__all__ = ["Image", "ImageError", "build_image", "read_image", "write_image", "CompileError", "MemoryPlan",
           "max_context", "plan_memory", "step_program", "tokens_program", "compile_model"]


def compile_model(cfg, weights, out_dir=None, **kwargs) -> Image:
    """Build the image of ``cfg``/``weights`` (kwargs as :func:`build_image`); write it to
    ``out_dir`` atomically when given."""
    image = build_image(cfg, weights, **kwargs)
    if out_dir is not None:
        write_image(image, out_dir)
    return image
