"""wmquant: post-training quantization of world models used for planning."""

__version__ = "0.2.0"
