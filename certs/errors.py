"""The single exception type raised by the certs package."""


class CertError(Exception):
    """A certificate, key, CSR or PEM file problem, with a one-line human message."""
