"""Flows across the network: opening them (Forwarder), counting them (FlowTable), transit."""
