"""Calibration data, statistics and range methods: import the modules (`trtq.calibrators.data`, ...)."""

__all__: list[str] = []
