"""The HTTP adaptor: HTTP/1.1 and HTTP/2 requests routed one by one across the network.

`message.py` is pure: the request/response vocabulary and how a message travels in a
flow's bytes. The trio drivers (listener side, connector side) sit around it.
"""
