"""sentiray: multimodal sentiment reasoning distilled from a large teacher into small models, on Ray."""

__version__ = "0.1.0"
