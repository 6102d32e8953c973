"""Where calculations run: a ``concurrent.futures.Executor`` for an :class:`OracleConfig`.

:func:`make_executor` is a context manager (the pool or Dask client is closed on exit):

- ``"process"``: ``ProcessPoolExecutor(workers)`` with the *spawn* start method (the parent may
  hold JAX threads, which ``fork`` would copy in a broken state);
- ``"thread"``: ``ThreadPoolExecutor(workers)`` (calculators that release the GIL or wait on
  external programs);
- ``"serial"``: :class:`SerialExecutor`, this process, one at a time;
- ``"dask"``: ``distributed.Client(scheduler).get_executor()`` (``pip install 'ntkal[dask]'``);
  the client is not made the global default.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

from ntkal.labelling.config import OracleConfig

__all__ = ["make_executor", "SerialExecutor"]


class SerialExecutor(Executor):
    """Runs each call in ``submit`` itself; returns a finished future (exceptions captured)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        future.set_running_or_notify_cancel()
        try:
            result = fn(*args, **kwargs)
        except Exception as err:  # KeyboardInterrupt and SystemExit propagate
            future.set_exception(err)
        else:
            future.set_result(result)
        return future


def _dask_client(address: str):
    try:
        import distributed
    except ImportError as err:
        raise ImportError("executor 'dask' needs the distributed package: pip install 'ntkal[dask]'") from err
    return distributed.Client(address, set_as_default=False)


@contextlib.contextmanager
def make_executor(config: OracleConfig) -> Iterator[Executor]:
    """Yield the executor ``config.executor`` with ``config.workers`` workers; shut it down
    (waiting for running calculations) on exit."""
    kind = config.executor
    if kind == "serial":
        yield SerialExecutor()
    elif kind == "thread":
        with ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="ntkal-oracle") as ex:
            yield ex
    elif kind == "process":
        with ProcessPoolExecutor(max_workers=config.workers,
                                 mp_context=multiprocessing.get_context("spawn")) as ex:
            yield ex
    elif kind == "dask":
        client = _dask_client(config.scheduler)
        try:
            executor = client.get_executor(pure=False)
            try:
                yield executor
            finally:
                executor.shutdown(wait=True)
        finally:
            client.close()
    else:  # unreachable: OracleConfig validates
        raise ValueError(f"unknown executor {kind!r}")
