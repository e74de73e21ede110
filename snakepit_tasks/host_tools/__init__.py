"""The bidirectional tool bridge, host side: functions of any process that reaches Redis,
called by adapters by name.

``api`` (register, list, unregister), ``registry`` (the records in Redis), ``listener`` (the
thread that serves a process's tools), ``wire`` (node ↔ registrant messages), ``spec``
(names, metadata, :class:`HostToolSpec`), ``context`` (re-entrancy). The node side is
``snakepit_tasks.node.host_tools``; the adapter side is ``SessionContext.call_host_tool``.
This package imports nothing at import time, so adapter processes can use ``spec``.
"""
