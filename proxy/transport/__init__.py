"""The forwarding layer both stacks end in (proxy/inbound, proxy/outbound).

It executes the attempt machine's actions (proxy/resilience/attempts.py): connect, try, hedge,
back off, stream the answer, answer locally or from the fallback, and account for the request.
What differs between the directions is a :class:`~proxy.transport.exchange.Side`, built once per
direction, never a string compared per request.
"""
