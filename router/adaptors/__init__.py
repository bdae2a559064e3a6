"""Adaptors: how a local protocol (TCP now) meets a flow."""
