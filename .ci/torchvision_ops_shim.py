"""Lets PyPI's torchvision import beside the CPU torch (test environments only; .ci/install installs it).

PyPI's torchvision wheel is a CUDA build: next to ``torch==X+cpu`` its C ops (``torchvision._C``) do not load, and its
``_meta_registrations`` then fails at import (``operator torchvision::nms does not exist``), so transformers and
vLLM cannot import their Qwen-VL processors. A ``.pth`` file runs ``install()`` at every interpreter start (vLLM's
spawned engine core and Ray's workers included); it only adds an import hook. When torchvision is imported and its
C ops did not load, the hook declares the two op schemas that ``_meta_registrations`` registers fake kernels for,
so the pure-Python parts import (the ops themselves stay unavailable). Where the ops load (a GPU image, a CPU
torchvision), it does nothing.
"""

import sys

SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
           "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_LIBS = []


class _Hook:
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision._meta_registrations":
            return None
        sys.meta_path.remove(self)
        ext = sys.modules.get("torchvision.extension")
        if ext is not None and not ext._has_ops():
            import torch

            lib = torch.library.Library("torchvision", "FRAGMENT")
            for schema in SCHEMAS:
                if not hasattr(torch.ops.torchvision, schema.split("(")[0]):
                    lib.define(schema)
            _LIBS.append(lib)  # a Library's definitions live as long as the object
        return None  # the normal import goes on


def install():
    if not any(isinstance(h, _Hook) for h in sys.meta_path):
        sys.meta_path.insert(0, _Hook())
