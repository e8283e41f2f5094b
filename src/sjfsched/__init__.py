"""sjfsched: shortest-job-first admission in front of local LLM inference.

Local inference servers (Ollama, llama.cpp, an in-process ``llama_cpp.Llama``)
answer one request at a time, in arrival order, so a short question waits
behind a long generation.  A :class:`Scheduler` predicts each request's answer
length and lets the shortest go first, with aging so long requests still get
their turn.

The public names are re-exported here; the code lives in private modules
(``_scheduler``, ``_queue``, ``_records``, ...).  Predictors are in
:mod:`sjfsched.predictors`, backends in :mod:`sjfsched.backends`.
"""

from ._errors import BackendError as BackendError
from ._errors import BackendUnavailable as BackendUnavailable
from ._errors import PredictorError as PredictorError
from ._errors import QueueFull as QueueFull
from ._errors import SchedulerClosed as SchedulerClosed
from ._errors import SchedulerError as SchedulerError
from ._log import RequestLog as RequestLog
from ._rates import DEFAULT_DECODE_RATE as DEFAULT_DECODE_RATE
from ._rates import DEFAULT_PREFILL_RATE as DEFAULT_PREFILL_RATE
from ._records import Chunk as Chunk
from ._records import Completion as Completion
from ._records import Prediction as Prediction
from ._records import Request as Request
from ._records import RequestFields as RequestFields
from ._scheduler import DEFAULT_AGING as DEFAULT_AGING
from ._scheduler import DEFAULT_CAP as DEFAULT_CAP
from ._scheduler import DEFAULT_MAX_WAIT as DEFAULT_MAX_WAIT
from ._scheduler import DEFAULT_PREEMPT as DEFAULT_PREEMPT
from ._scheduler import ChunkStream as ChunkStream
from ._scheduler import Job as Job
from ._scheduler import Scheduler as Scheduler
from ._scheduler import SchedulerStatistics as SchedulerStatistics
from ._scheduler import Ticket as Ticket
from ._sync import SyncScheduler as SyncScheduler
from ._sync import SyncStream as SyncStream
from ._version import __version__ as __version__
from ._virtual import VirtualEventLoop as VirtualEventLoop
from ._virtual import run_virtual as run_virtual
from ._wrap import ScheduledLlama as ScheduledLlama
from ._wrap import wrap as wrap

__all__ = [
    "DEFAULT_AGING",
    "DEFAULT_CAP",
    "DEFAULT_DECODE_RATE",
    "DEFAULT_MAX_WAIT",
    "DEFAULT_PREEMPT",
    "DEFAULT_PREFILL_RATE",
    "BackendError",
    "BackendUnavailable",
    "Chunk",
    "ChunkStream",
    "Completion",
    "Job",
    "Prediction",
    "PredictorError",
    "QueueFull",
    "Request",
    "RequestFields",
    "RequestLog",
    "Scheduler",
    "SchedulerClosed",
    "SchedulerError",
    "ScheduledLlama",
    "SchedulerStatistics",
    "SyncScheduler",
    "SyncStream",
    "Ticket",
    "VirtualEventLoop",
    "__version__",
    "run_virtual",
    "wrap",
]
