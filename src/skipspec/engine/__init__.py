"""The decode loop."""

from .decoder import SwiftDecoder, TokenStream

__all__ = ["SwiftDecoder", "TokenStream"]
