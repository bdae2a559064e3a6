"""The routing core: pure link-state routing (no I/O, no clock, no threads).

`RoutingCore` holds the link-state database for one router, floods signed `RouterRecord`s,
ages them out, computes shortest paths and answers `candidates(key)`; `choice.choose` orders
candidates for a listener. `sim.SimNetwork` wires many cores together in one process.
"""

from .choice import STRATEGIES, choose
from .core import Candidate, RoutingCore
from .errors import ForgedRecord, LimitExceeded, MalformedMessage, RoutingError
from .records import KeyAdvert, RouterRecord, decode_message, encode_message
from .signing import (
    Ed25519Signer,
    NullSigner,
    Signer,
    VerifyFn,
    ed25519_verify,
    null_verify,
    router_id_for,
)

__all__ = [
    "STRATEGIES",
    "Candidate",
    "Ed25519Signer",
    "ForgedRecord",
    "KeyAdvert",
    "LimitExceeded",
    "MalformedMessage",
    "NullSigner",
    "RouterRecord",
    "RoutingCore",
    "RoutingError",
    "Signer",
    "VerifyFn",
    "choose",
    "decode_message",
    "ed25519_verify",
    "encode_message",
    "null_verify",
    "router_id_for",
]
