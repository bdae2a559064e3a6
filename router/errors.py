"""The error root (`VanError`) every router error sits under: placeholder until it lands."""
