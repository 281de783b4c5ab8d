"""Domain exceptions. Each knows the gRPC status it maps to (see `interceptors.py`)."""
from __future__ import annotations

import grpc


class HybridrecError(Exception):
    """Base class: a failure whose message is safe and useful to show to a caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(HybridrecError):
    """A request field is out of range or malformed; the message names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(HybridrecError):
    """A named entity (item, pipeline) does not exist in the served model."""

    code = grpc.StatusCode.NOT_FOUND


class ConfigError(HybridrecError):
    """A YAML config is invalid; raised before the server listens."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class BundleError(HybridrecError):
    """A model bundle is missing, corrupt or of another format version."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class DataError(HybridrecError):
    """Training input (events or items) cannot be used."""

    code = grpc.StatusCode.INVALID_ARGUMENT
