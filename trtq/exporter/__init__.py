"""Export, placement, Q/DQ insertion, weight quantizers, passes and checks: import the modules."""

__all__: list[str] = []
