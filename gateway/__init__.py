"""fieldgate: an edge gateway from serial and Modbus sensors to one JWT-authenticated MQTT v5 uplink."""

#: The one place the version is written: pyproject.toml reads it from here (``[tool.setuptools.dynamic]``), so
#: the running gateway need not load ``importlib.metadata`` (tens of milliseconds of every start) to know it.
__version__ = "0.1.0"
