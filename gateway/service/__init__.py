"""Running as a system service: sd_notify, the watchdog, the status snapshot and file, metrics, logging and
key-file checks. :func:`gateway.service.runner.run_service` runs a gateway with all of it."""
