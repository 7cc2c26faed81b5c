"""One module per fault kind, each registering a `ftlocust.faults.Fault` subclass.

Imported lazily by `ftlocust.faults.kind_class` (see `BUILTIN_KINDS` there), never all at once:
a kind's optional library is needed only by a scenario that uses the kind.
"""
