from .harness import sidecar_factory  # noqa: F401  (fixture)
