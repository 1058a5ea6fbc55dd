"""``import zennit`` without torchvision: zennit 0.5.1 imports torchvision's ResNet blocks for its
ResNet canonizer, and torchvision does not install beside our torch. Tests call ``zennit()`` for
the module; the stub's blocks match no real module, so their canonizer is a no-op (test twins
merge batch norm and write residual sums as ``zennit.layer.Sum`` by hand)."""

import sys
import types


def zennit():
    """The ``zennit`` package, with a stub ``torchvision.models.resnet`` put in place if needed."""
    try:
        import torchvision.models.resnet  # noqa: F401
    except ImportError:
        resnet = types.ModuleType("torchvision.models.resnet")
        resnet.Bottleneck = type("Bottleneck", (), {})
        resnet.BasicBlock = type("BasicBlock", (), {})
        models = types.ModuleType("torchvision.models")
        models.resnet = resnet
        top = types.ModuleType("torchvision")
        top.models = models
        sys.modules.update({"torchvision": top, "torchvision.models": models, "torchvision.models.resnet": resnet})
    import zennit as z
    import zennit.attribution  # noqa: F401
    import zennit.composites  # noqa: F401
    import zennit.layer  # noqa: F401
    import zennit.rules  # noqa: F401

    return z
