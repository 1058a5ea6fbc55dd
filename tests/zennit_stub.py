"""``import zennit`` (and zennit-crp's ``crp``) from ``.references/`` at the repository's root, where
the README's set-up installs them outside the environment (``pip install --no-deps --target
.references``): Quantus imports zennit whenever it finds it, and zennit imports torchvision, which
cannot be installed beside our torch. So nothing but this module puts them on ``sys.path``; once
imported here, zennit stays in ``sys.modules`` and Quantus' own import of it finds it there.

Without torchvision: zennit 0.5.1 imports torchvision's ResNet blocks for its
ResNet canonizer, and torchvision does not install beside our torch. ``zennit()`` imports it with
a stub ``torchvision.models.resnet`` in ``sys.modules`` for that import only (removed afterwards,
so nothing else sees a fake torchvision); the stub's blocks match no module, so that canonizer is
a no-op (test twins merge batch norm and write residual sums as ``zennit.layer.Sum`` by hand)."""

import importlib
import sys
import types
from pathlib import Path

REFERENCES = Path(__file__).resolve().parents[1] / ".references"


def zennit():
    """The ``zennit`` package with its ``attribution``, ``composites``, ``layer``, ``rules``."""
    if REFERENCES.is_dir() and str(REFERENCES) not in sys.path:
        sys.path.append(str(REFERENCES))
    if "zennit.torchvision" not in sys.modules:
        try:
            import torchvision.models.resnet  # noqa: F401
        except ImportError:
            names = ["torchvision", "torchvision.models", "torchvision.models.resnet"]
            stubs = {n: types.ModuleType(n) for n in names}
            stubs["torchvision"].models = stubs["torchvision.models"]
            stubs["torchvision.models"].resnet = stubs["torchvision.models.resnet"]
            for block in ("Bottleneck", "BasicBlock"):
                setattr(stubs["torchvision.models.resnet"], block, type(block, (), {}))
            sys.modules.update(stubs)
            try:
                import zennit  # noqa: F401
            finally:
                for n in names:
                    sys.modules.pop(n, None)
    for sub in ("attribution", "composites", "layer", "rules"):
        importlib.import_module(f"zennit.{sub}")
    return importlib.import_module("zennit")
