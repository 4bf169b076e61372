"""wmquant: post-training quantization of world models used for planning."""

__version__ = "0.1.0"
