"""Server interceptors, one concern each, composed by :mod:`greeter.pipeline`.

An interceptor's ``bind(method)`` returns the :class:`~greeter.pipeline.Hooks`
for that method, or None: ``before(context, metadata)`` (sync or async; it
refuses the call by returning ``context.abort(...)`` unawaited, so the pipeline
can stamp the server-timing trailer first; ``metadata`` is the request's, read
once per call when a hook sets ``reads_metadata``), ``after(record)`` (sync; sees
the final status, duration and message counts) and ``trailers`` (metadata for
every reply, set by the pipeline). Interceptors are bound to each method once, when
the server is built, so a call pays only for the hooks that apply to its method.
"""

from greeter.interceptors.access_log import AccessLog
from greeter.interceptors.auth import Auth
from greeter.interceptors.check_log import CheckRecorder
from greeter.interceptors.faults import Faults
from greeter.interceptors.identity import Identity
from greeter.interceptors.metadata_limit import MetadataLimit
from greeter.interceptors.metrics import Metrics

__all__ = ["AccessLog", "Auth", "CheckRecorder", "Faults", "Identity", "MetadataLimit", "Metrics"]
