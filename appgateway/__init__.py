"""appgateway: an egress credential gateway compatible with Kyma's Application Gateway."""

from appgateway import native

__version__ = "0.1.0"

native.guard()
