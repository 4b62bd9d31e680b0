"""appgateway: an egress credential gateway compatible with Kyma's Application Gateway."""

__version__ = "0.1.0"
