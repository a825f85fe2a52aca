"""The demos: the whole product loop on a generated world (``discover demo``, ``demo.loop``) and an
in-process minute-long version (``discover demo --quick``, ``demo.quick``). ``tiny_cnn`` is the small CNN
both train (a ``module:function`` builder: ``discover_ray.demo:tiny_cnn``)."""

from discover_ray.demo.quick import DemoResult, LayerLabels, run_demo, tiny_cnn

__all__ = ["DemoResult", "LayerLabels", "run_demo", "tiny_cnn"]
