"""Sans-I/O HTTP/2 for the fast path.

``hpack`` (RFC 7541 codec), ``frames`` (RFC 9113 framing) and ``validate`` (RFC 9113 8.1-8.3
message rules) are facades over Cython-compiled modules with pure-Python twins (``_X_py.py`` +
``_X_c.pxd``); ``connection`` is the connection state machine on top; ``errors`` holds the
exception types both twins share.
"""
