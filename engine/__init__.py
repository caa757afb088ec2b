"""The GPU engine (docs/architecture.md): the facade is `engine.service.Engine`."""

import logging


class _NoKernelsHint(logging.Filter):
    """bitsandbytes logs, at import on a CPU with AVX-512 BF16, that an optional faster CPU kernel could not be
    fetched and to `pip install kernels`: the bot needs no such package, and the line reads like a missing step."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pip install kernels" not in record.getMessage()


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NoKernelsHint())
